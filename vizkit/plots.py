"""Everything matplotlib draws. Figures are built with matplotlib.figure.Figure, so no GUI backend is needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure


def curves_figure(history: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("val", "--s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=split)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="%")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def samples_figure(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], cols: int = 10) -> Figure:
    """A grid of images with their labels as titles (recipe 003's 2x10 look at the training data)."""
    n = len(images)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(cols * 1.1, rows * 1.3), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = (images[i].float() / 255).permute(1, 2, 0).numpy()  # (H, W, C) for imshow
            ax.imshow(img if img.shape[2] == 3 else img[:, :, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(classes[int(labels[i])], fontsize=9)
    fig.tight_layout()
    return fig
