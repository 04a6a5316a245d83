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


EXAMPLE_TILE = 40  # px: a dataset example, enlarged (nearest neighbour)
OUTLINE = (230, 40, 40)  # the receptive field's box


def _grey(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W, 3)."""
    a = image.numpy()
    return np.repeat(a[0][..., None], 3, axis=2) if a.shape[0] == 1 else a[:3].transpose(1, 2, 0).copy()


def _crop(image: torch.Tensor, box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, tuple | None]:
    """The part of the image around a receptive field (the field and half as much again around it, inside the
    image), and the field's box in that crop's coordinates; the whole image where there is no box."""
    picture = _grey(image)
    if box is None:
        return picture, None
    h, w = picture.shape[:2]
    top, left, bottom, right = box
    side = min(max(h, w), round((bottom - top + 1) * 1.5) + 2)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0 = int(min(max(0, round(cy - side / 2)), max(0, h - side)))
    x0 = int(min(max(0, round(cx - side / 2)), max(0, w - side)))
    crop = picture[y0 : y0 + side, x0 : x0 + side]
    return crop, (top - y0, left - x0, bottom - y0, right - x0)


def _tile(picture: np.ndarray, box: tuple | None, size: int = EXAMPLE_TILE) -> np.ndarray:
    img = Image.fromarray(picture).resize((size, size), Image.Resampling.NEAREST)
    if box is not None:
        sy, sx = size / picture.shape[0], size / picture.shape[1]
        top, left, bottom, right = box
        ImageDraw.Draw(img).rectangle(
            [
                max(0, left * sx),
                max(0, top * sy),
                min(size - 1, (right + 1) * sx - 1),
                min(size - 1, (bottom + 1) * sy - 1),
            ],
            outline=OUTLINE,
        )
    return np.asarray(img)


def examples_image(
    images: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, boxes: list[list[tuple]] | None,
    optimised: torch.Tensor | None, title: str,
) -> np.ndarray:  # fmt: skip
    """A row per channel: its optimised input, the images that drive it hardest (cropped to what the strongest
    unit sees, that field outlined), then those that drive it least (whole). `images` uint8 (N, C, H, W); `top`
    and `bottom` (channels, k) indices into it; `boxes[c][i]` the field of top image i of channel c."""
    channels, k = top.shape
    font = _font()
    label_w, gap = 26, 10
    cols = (1 if optimised is not None else 0) + k + k
    width = label_w + cols * (EXAMPLE_TILE + GAP) + (2 if optimised is not None else 1) * gap
    height = HEADER + LABEL + channels * (EXAMPLE_TILE + GAP) + GAP
    canvas = Image.new("RGB", (max(width, 2 * GAP + math.ceil(font.getlength(title))), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 2), title, fill=(0, 0, 0), font=font)
    x_top = label_w + ((EXAMPLE_TILE + GAP + gap) if optimised is not None else 0)
    x_low = x_top + k * (EXAMPLE_TILE + GAP) + gap
    if optimised is not None:
        draw.text((label_w, HEADER), "optimised", fill=(60, 60, 60), font=font)
    draw.text((x_top, HEADER), f"strongest {k}, field outlined", fill=(60, 60, 60), font=font)
    draw.text((x_low, HEADER), f"weakest {k}", fill=(60, 60, 60), font=font)
    for c in range(channels):
        y = HEADER + LABEL + c * (EXAMPLE_TILE + GAP)
        draw.text((GAP, y + EXAMPLE_TILE // 2 - 5), str(c), fill=(60, 60, 60), font=font)
        if optimised is not None:
            pixels = (optimised[c].clamp(0, 1) * 255).round().to(torch.uint8)
            canvas.paste(Image.fromarray(_tile(_grey(pixels), None)), (label_w, y))
        for i in range(k):
            crop, box = _crop(images[int(top[c, i])], boxes[c][i] if boxes else None)
            canvas.paste(Image.fromarray(_tile(crop, box)), (x_top + i * (EXAMPLE_TILE + GAP), y))
            whole = _grey(images[int(bottom[c, i])])
            canvas.paste(Image.fromarray(_tile(whole, None)), (x_low + i * (EXAMPLE_TILE + GAP), y))
    return np.asarray(canvas)
