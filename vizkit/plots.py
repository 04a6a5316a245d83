"""Everything matplotlib draws. Figures are built with matplotlib.figure.Figure, so no GUI backend is needed."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from vizkit.files import write_output


def curves_figure(history: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side (whichever of them the history has)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("val", "--s")):
        for ax, key, scale in ((ax_loss, f"{split}_loss", 1), (ax_acc, f"{split}_accuracy", 100)):
            points = [(h["epoch"], scale * h[key]) for h in history if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="%")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save as PNG, atomically: an interrupted save leaves the previous file."""
    return write_output(path, lambda tmp: fig.savefig(tmp, format="png"))


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


def _show_input(ax, image: torch.Tensor, title: str) -> None:  # noqa: ANN001
    img = image.detach().cpu().float()
    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy() if img.shape[0] == 3 else img[0].numpy(), cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _wrap(text: str, width_inches: float, fontsize: float = 10) -> str:
    return textwrap.fill(text, max(20, int(width_inches * 72 / (fontsize * 0.55))))  # about 0.55 em a character


def wrapped_title(fig: Figure, text: str, fontsize: float = 10) -> float:
    """A figure title wrapped to the figure's width (a long one was cut off at both sides); returns the
    height it takes, in inches, for the layout below it."""
    wrapped = _wrap(text, fig.get_figwidth(), fontsize)
    fig.suptitle(wrapped, fontsize=fontsize, y=1 - 0.06 / fig.get_figheight(), va="top")
    return 0.12 + (wrapped.count("\n") + 1) * fontsize * 1.3 / 72


def _below_title(fig: Figure, title_inches: float) -> None:
    fig.tight_layout(rect=(0, 0, 1, 1 - title_inches / fig.get_figheight()))


def activation_figure(
    activation: torch.Tensor, layer: str, image: torch.Tensor, title: str, classes: Sequence[str] | None = None
) -> Figure:
    """One step's response to one input: a tile per channel (C, H, W), or a bar per unit (N,), named by class
    where `classes` is given (the model's output).

    Tiles share one colour scale, shown by the colour bar, so channels can be compared with each other.
    """
    act = activation.detach().cpu().float()
    if act.dim() == 3 and act.shape[-1] * act.shape[-2] > 1:
        channels = act.shape[0]
        cols = min(channels, max(4, int(np.ceil(np.sqrt(channels * 1.5)))))
        rows = int(np.ceil(channels / cols))
        text = f"{layer}: {channels} channels, {act.shape[1]}x{act.shape[2]} - {title}"
        width = 1.4 * cols + 2.6
        lines = _wrap(text, width).count("\n") + 1
        head = 0.37 + 0.18 * lines  # the title's lines and the first row's channel numbers, in inches
        height = 1.45 * rows + 0.35 + head
        fig = Figure(figsize=(width, height), dpi=100)
        # margins in inches, set by hand: tight_layout measured every text box and took 0.4 s of a 3 s command
        grid = fig.add_gridspec(
            rows, cols + 2, width_ratios=[1.6] + [1] * cols + [0.12],
            left=0.15 / width, right=1 - 0.45 / width, bottom=0.1 / height, top=1 - head / height,
            wspace=0.15, hspace=0.3,
        )  # fmt: skip
        _show_input(fig.add_subplot(grid[: min(rows, 2), 0]), image, "input")
        vmin, vmax = float(act.min()), float(act.max())
        shown = None
        for c in range(channels):
            ax = fig.add_subplot(grid[c // cols, 1 + c % cols])
            shown = ax.imshow(act[c].numpy(), cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_title(str(c), fontsize=8, pad=2)
            ax.axis("off")
        fig.colorbar(shown, cax=fig.add_subplot(grid[:, -1]))
        wrapped_title(fig, text)
        return fig
    values = act.flatten().numpy()
    fig = Figure(figsize=(max(6.0, min(16.0, 0.12 * len(values) + 3)), 3.2), dpi=100)
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 6])
    _show_input(fig.add_subplot(grid[0, 0]), image, "input")
    ax = fig.add_subplot(grid[0, 1])
    ax.bar(np.arange(len(values)), values, color=np.where(values >= 0, "tab:blue", "tab:red"))
    if classes is not None and len(classes) == len(values):
        ax.set_xticks(np.arange(len(values)), [str(c) for c in classes], rotation=45 if len(values) > 12 else 0)
        ax.set(xlabel="class", ylabel="value")
    else:
        ax.set(xlabel="unit", ylabel="activation")
    ax.grid(axis="y", alpha=0.3)
    _below_title(fig, wrapped_title(fig, f"{layer}: {len(values)} units - {title}"))
    return fig


def kernels_figure(weight: torch.Tensor, layer: str, limit: int = 16) -> Figure:
    """Conv kernels (out, in, kH, kW) on one diverging colour scale: a tile per output channel when there is
    one input channel, else a row per output channel and a column per input channel (first `limit` of each)."""
    w = weight.detach().cpu().float()
    out_c, in_c = w.shape[:2]
    if in_c == 1:
        cols = int(np.ceil(np.sqrt(out_c)))
        rows = int(np.ceil(out_c / cols))
        tiles = [
            (r, c, w[r * cols + c, 0], str(r * cols + c))
            for r in range(rows)
            for c in range(cols)
            if r * cols + c < out_c
        ]
        note = "a tile per output channel"
    else:
        rows, cols = min(out_c, limit), min(in_c, limit)
        tiles = [(o, i, w[o, i], f"{o}<-{i}" if o == 0 or i == 0 else "") for o in range(rows) for i in range(cols)]
        note = (
            f"rows: output channels, columns: input channels (first {limit})"
            if max(out_c, in_c) > limit
            else ("rows: output channels, columns: input channels")
        )
    bound = float(w.abs().max())
    fig = Figure(figsize=(max(4.0, 0.75 * cols + 1.5), max(3.0, 0.75 * rows + 1.0)), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = None
    for r, c, kernel, label in tiles:
        shown = axes[r, c].imshow(kernel.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[r, c].set_title(label, fontsize=7, pad=2)
    fig.colorbar(shown, ax=axes, shrink=0.7)
    fig.suptitle(f"{layer} kernels {tuple(weight.shape)}: {note}", fontsize=9)
    return fig


def prediction_figure(
    rows: Sequence[tuple[str, np.ndarray, torch.Tensor, np.ndarray]], classes: Sequence[str]
) -> Figure:
    """Per image (name, photo, model input, probabilities): the photo, the input the model saw, and the bars."""
    fig = Figure(figsize=(10, 3.0 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": [1.2, 1, 2]})
    for (name, original, model_input, probs), (ax_photo, ax_input, ax_bars) in zip(rows, axes, strict=True):
        best = int(np.argmax(probs))
        ax_photo.imshow(original, cmap="gray" if original.ndim == 2 else None)
        ax_photo.set_title(name, fontsize=9)
        ax_photo.axis("off")
        _show_input(ax_input, model_input, f"what the model saw ({'x'.join(map(str, model_input.shape[-2:]))})")
        ax_bars.bar(
            range(len(probs)), probs, color=["tab:orange" if i == best else "tab:blue" for i in range(len(probs))]
        )
        ax_bars.set_xticks(range(len(probs)), classes, rotation=45 if max(map(len, classes)) > 2 else 0, fontsize=8)
        ax_bars.set(ylim=(0, 1), ylabel="probability", title=f"{classes[best]} ({100 * probs[best]:.1f}%)")
    fig.tight_layout()
    return fig


def confusion_figure(cm: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Counts and row-normalised rates side by side: row = true class, column = predicted class."""
    counts = cm.numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(13, 5.8), dpi=100)
    for ax, data, title, fmt in zip(
        fig.subplots(1, 2), (counts, rates), ("counts", "row-normalised (recall on the diagonal)"), ("d", ".2f"),
        strict=True,
    ):  # fmt: skip
        shown = ax.imshow(data, cmap="Blues")
        ax.set(title=title, xlabel="predicted", ylabel="true")
        ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        top = data.max()
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if data[i, j]:
                    color = "white" if data[i, j] > top / 2 else "black"
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(shown, ax=ax, shrink=0.8)
    accuracy = np.trace(counts) / counts.sum()
    fig.suptitle(f"confusion matrix on {counts.sum():,} test images: accuracy {100 * accuracy:.2f}%")
    fig.tight_layout()
    return fig


def top_losses_figure(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, probs: torch.Tensor, classes: Sequence[str]
) -> Figure:
    """The most confidently wrong images: true label, prediction and its probability over each."""
    cols = min(8, len(images))
    rows = (len(images) + cols - 1) // cols
    fig = Figure(figsize=(cols * 1.6, rows * 2.3), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[: len(images)]):
        img = (images[i].float() / 255).permute(1, 2, 0).numpy()
        ax.imshow(img if img.shape[2] == 3 else img[:, :, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"true {classes[int(labels[i])]}\npred {classes[int(preds[i])]} {100 * float(probs[i]):.0f}%", fontsize=8
        )
    if bool((labels == preds).all()):  # no mistake among them (a perfect model): these are the least confident
        fig.suptitle("top losses: no test image was wrong; the least confident right answers", fontsize=10)
    else:
        fig.suptitle("top losses: the most confidently wrong test images", fontsize=10)
    fig.tight_layout()
    return fig


def explain_figure(
    pixels: torch.Tensor,
    maps: dict[str, torch.Tensor],
    probs: np.ndarray,
    classes: Sequence[str],
    title: str,
    photo: np.ndarray | None = None,
    first_layer: tuple[str, torch.Tensor] | None = None,
) -> Figure:
    """One figure: [the photo,] the input the model saw, the probabilities, each attribution map over the
    input, and (below) the first conv layer's feature maps."""
    top = (photo is not None) + 2 + len(maps)
    fig = Figure(figsize=(2.6 * top, 6.2 if first_layer else 3.4), dpi=100)
    grid = fig.add_gridspec(2 if first_layer else 1, top, height_ratios=[1.25, 1] if first_layer else None)
    col = 0
    if photo is not None:
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(photo)
        ax.set_title("your photo", fontsize=9)
        ax.axis("off")
        col += 1
    _show_input(fig.add_subplot(grid[0, col]), pixels, f"what the model saw ({pixels.shape[-2]}x{pixels.shape[-1]})")
    ax = fig.add_subplot(grid[0, col + 1])
    best = int(np.argmax(probs))
    ax.bar(range(len(probs)), probs, color=["tab:orange" if i == best else "tab:blue" for i in range(len(probs))])
    ax.set_xticks(range(len(probs)), classes, rotation=45 if max(map(len, classes)) > 2 else 0, fontsize=7)
    ax.set(ylim=(0, 1), title=f"{classes[best]} ({100 * probs[best]:.1f}%)")
    gray = pixels.detach().float().mean(0).numpy()
    for i, (name, m) in enumerate(maps.items()):
        ax = fig.add_subplot(grid[0, col + 2 + i])
        ax.imshow(gray, cmap="gray")
        values = m.detach().float().numpy()
        if values.min() < 0:  # signed attributions: red for, blue against
            bound = float(np.abs(values).max()) or 1.0
            ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, alpha=0.7)
        else:
            ax.imshow(values, cmap="jet", alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if first_layer:
        layer, act = first_layer
        ax = fig.add_subplot(grid[1, :])
        tiles = act[:32]
        # rows of 16 tiles, as make_grid(nrow=16) would lay them out (one image of up to 32 channels)
        rows = tiles.reshape(-1, min(16, len(tiles)), *tiles.shape[1:]) if len(tiles) % 16 == 0 else tiles[None]
        image = feature_grid(rows)[0]
        ax.imshow(image.numpy(), cmap="viridis")
        ax.set_title(f"{layer}: feature maps of the first {len(tiles)} channels (one colour scale)", fontsize=9)
        ax.axis("off")
    _below_title(fig, wrapped_title(fig, title))
    return fig


def tiles_figure(tiles: torch.Tensor, title: str) -> Figure:
    """Grey images (N, C, H, W) in [0, 1] in a numbered grid: synthesised inputs, one per channel."""
    n = len(tiles)
    cols = int(np.ceil(np.sqrt(n * 1.5)))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(1.2 * cols + 0.5, 1.35 * rows + 0.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        _show_input(ax, tiles[i], str(i))
    _below_title(fig, wrapped_title(fig, title))
    return fig


def feature_grid(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) activations -> one image: a row per input image, a tile per channel, one scale per layer."""
    b, c, h, w = maps.shape
    lo, hi = maps.min(), maps.max()
    scaled = (maps - lo) / (hi - lo).clamp_min(1e-8)
    # torchvision's make_grid(nrow=c, padding=1, pad_value=1) without importing torchvision (2 s at start-up):
    # a 1 px white line after each tile, then one before the first row and column
    cells = F.pad(scaled.float(), (0, 1, 0, 1), value=1.0)  # (B, C, h + 1, w + 1)
    grid = cells.permute(0, 2, 1, 3).reshape(b * (h + 1), c * (w + 1))
    return F.pad(grid, (1, 0, 1, 0), value=1.0).expand(3, -1, -1).contiguous()
