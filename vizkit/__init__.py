"""vizkit: train a PyTorch CNN on MNIST and see inside it."""

from vizkit.errors import VizkitError

__all__ = ["VizkitError"]
__version__ = "0.1.0"
