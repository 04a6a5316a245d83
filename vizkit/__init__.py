"""vizkit: train a PyTorch CNN on MNIST and see inside it.

`from vizkit import Run` gives a hand-written training loop what `python -m vizkit.train` writes (run.py).
"""

from typing import TYPE_CHECKING

from vizkit.errors import VizkitError

if TYPE_CHECKING:
    from vizkit.run import Run

__all__ = ["Run", "VizkitError"]
__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202
    # Run imports torch; `import vizkit` (and every command's start-up) should not pay for that unless asked.
    if name == "Run":
        from vizkit.run import Run

        return Run
    raise AttributeError(f"module 'vizkit' has no attribute {name!r}")
