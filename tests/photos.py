"""Photos of digits made from MNIST test images: dark ink on a large, unevenly lit sheet of paper."""

from __future__ import annotations

import numpy as np
from PIL import Image


def digit_photo(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    scale = int(rng.integers(6, 14))
    ink_mask = Image.fromarray(digit28).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    width, height = int(rng.integers(500, 900)), int(rng.integers(450, 800))
    paper = rng.normal(225, 6, (height, width)) + np.linspace(-15, 15, width)[None, :]  # grain and a shadow
    canvas = Image.fromarray(paper.clip(0, 255).astype(np.uint8))
    x = int(rng.integers(0, width - ink_mask.width))
    y = int(rng.integers(0, height - ink_mask.height))
    canvas.paste(Image.new("L", ink_mask.size, 40), (x, y), ink_mask)  # off-centre, any size
    return canvas.convert("RGB")
