"""One layer's activations as a readable picture, drawn with numpy and PIL (no matplotlib figure per call).

TensorBoard's Images tab shows what Run logs each epoch, at the card's width (about 330 px): so
every tile is at least 28 px (small maps are enlarged, nearest neighbour), numbered, on one viridis scale
per layer with a colour bar and its range, as `vizkit.features` draws them.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 28  # px: the smallest tile a person can read at TensorBoard's default card size
COLUMNS = 8  # 8 tiles of 28-32 px and a colour bar fit one TensorBoard card without being shrunk
GAP, LABEL, HEADER, BAR = 3, 11, 16, 50  # px: between tiles, channel number, title line, colour bar and its labels


@cache
def viridis() -> np.ndarray:
    """matplotlib's viridis as a (256, 3) uint8 table: the colour map vizkit.features uses."""
    from matplotlib import colormaps  # only the table, once

    return (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def to_levels(values: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """Values -> 0..255 on their own range (one colour scale for a whole layer), and that range."""
    lo, hi = float(values.min()), float(values.max())
    levels = ((values.float() - lo) / max(hi - lo, 1e-12) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return levels, lo, hi


def tile_scale(height: int, width: int) -> int:
    """The whole-number enlargement that makes the shorter side of a map at least MIN_TILE px."""
    return max(1, math.ceil(MIN_TILE / max(1, min(height, width))))


def layer_image(activation: torch.Tensor, title: str) -> np.ndarray:
    """(C, H, W) activations of one input -> an (H', W', 3) uint8 picture: a numbered tile per channel in rows
    of COLUMNS, one viridis scale for the whole layer, and a colour bar labelled with that scale's range."""
    act = activation.detach().float().cpu()
    if act.dim() != 3:
        raise ValueError(f"layer_image takes (C, H, W) activations, not shape {tuple(act.shape)}")
    channels, h, w = act.shape
    levels, lo, hi = to_levels(act)
    scale = tile_scale(h, w)
    th, tw = h * scale, w * scale
    cols = min(channels, COLUMNS)
    rows = math.ceil(channels / cols)
    cell_w, cell_h = tw + GAP, th + LABEL + GAP
    font = _font()
    width = max(GAP + cols * cell_w + BAR, 2 * GAP + math.ceil(font.getlength(title)))
    height = HEADER + rows * cell_h + GAP
    canvas = np.full((height, width, 3), 255, np.uint8)
    lut = viridis()
    for c in range(channels):
        x = GAP + (c % cols) * cell_w
        y = HEADER + (c // cols) * cell_h + LABEL
        tile = levels[c].repeat(scale, 0).repeat(scale, 1)
        canvas[y : y + th, x : x + tw] = lut[tile]
    top, bottom = HEADER + LABEL, height - GAP  # the colour bar spans the tiles, high values on top
    bar_x = GAP + cols * cell_w + 6
    ramp = np.linspace(255, 0, max(2, bottom - top)).round().astype(np.uint8)
    canvas[top:bottom, bar_x : bar_x + 8] = lut[ramp][:, None, :]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    draw.text((GAP, 2), title, fill=(0, 0, 0), font=font)
    for c in range(channels):
        draw.text((GAP + (c % cols) * cell_w, HEADER + (c // cols) * cell_h), str(c), fill=(60, 60, 60), font=font)
    draw.text((bar_x + 10, top - 2), f"{hi:.2g}", fill=(0, 0, 0), font=font)
    draw.text((bar_x + 10, bottom - 10), f"{lo:.2g}", fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def square(images: torch.Tensor) -> torch.Tensor:
    """Non-square images (N, C, H, W) centred on black squares: the projector's sprite takes square ones only."""
    h, w = images.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return torch.nn.functional.pad(images, (left, side - w - left, top, side - h - top))
