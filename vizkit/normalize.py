"""Normalisation, both ways: pixels in [0, 1] into what a model takes, and a model's inputs back to pixels.
No I/O: the inspection commands, the exporter and Run share it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vizkit.graph import first_tensor


class Normalized(nn.Module):
    """model((x - mean) / std): takes pixels in [0, 1], so the file carries its own preprocessing. A model that
    returns a tuple, list or dict gives its first tensor."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model((x - self.mean) / self.std), self.model)


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised inputs (N, C, H, W) back to uint8 pixels on the CPU: what the images were before."""
    m = torch.tensor(list(mean)).view(1, -1, 1, 1)
    s = torch.tensor(list(std)).view(1, -1, 1, 1)
    return ((x.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().byte()
