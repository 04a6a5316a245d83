"""A person's photo, prepared for a model: a digit the way MNIST's digits were prepared, anything else fitted.

MNIST digits are light ink on black, scaled so the longer side is 20 px, and placed in 28 x 28 so their
centre of mass is at the centre. A photo is dark ink on light paper, anywhere on the page, any size:
resizing the whole photo to 28 x 28 (what the tutorials do) gives confident wrong answers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from vizkit.errors import VizkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 50_000_000  # a 50-megapixel photo is plenty; larger is refused before decoding (decompression bombs)
WORKING_SIDE = 512  # photos are shrunk to this before the work: the digit ends up 20 px tall anyway


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image; anything wrong with it is one VizkitError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise VizkitError(f"image {path} does not exist")
    return decode_image(path, str(path))


DRAWABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I", "I;16", "F")  # PIL converts these to L/RGB


def decode_image(source: str | Path | IO[bytes], name: str) -> Image.Image:
    """Decode an image from a file or bytes (a photo dropped on vizkit's TensorBoard tab); `name` is what
    the one-line error calls it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise VizkitError(
                        f"{name} is {img.width} x {img.height} pixels, more than the {MAX_PIXELS:,} allowed; "
                        "crop or shrink the photo first"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)  # phone photos are often stored sideways
                if img.mode not in DRAWABLE_MODES:  # CMYK, YCbCr, ...: to RGB here, where a failure is named
                    try:
                        img = img.convert("RGB")
                    except ValueError:
                        raise VizkitError(f"{name} is a {img.mode} image, which cannot be converted to RGB or grey; "
                                          "save it as a PNG or JPEG") from None  # fmt: skip
                return img
    except VizkitError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise VizkitError(f"{name} is too large to decode safely; crop or shrink the photo first") from None
    except UnidentifiedImageError:
        raise VizkitError(f"{name} is not an image PIL can read; give a PNG or JPEG") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise VizkitError(f"{name} could not be decoded ({exc}); it may be truncated or corrupt") from None


def image_files(paths: list[str]) -> list[Path]:
    """The given files, with directories expanded to the images directly inside them (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise VizkitError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        else:
            files.append(p)
    return files


def mnist_style(img: Image.Image, size: int | tuple[int, int] = 28, box: int = 20) -> np.ndarray:
    """A photo of one digit -> (size, size) float32 in [0, 1], light ink on black, as MNIST; `size` may be
    (height, width) for a model of other inputs, with `box` at most the shorter side.

    Grayscale; invert when the background is light; remove the background level; crop to the ink; scale
    the longer side to `box` pixels keeping the aspect ratio; place by centre of mass in the canvas.
    """
    height, width = (size, size) if isinstance(size, int) else size
    gray = img.convert("L")
    gray.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
    a = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 0.5:  # light paper: make the ink the bright part, as in MNIST
        a = 1.0 - a
    background = np.median(a)  # most of a photo is paper
    peak = np.percentile(a, 99.9)
    if peak - background < 0.1:
        raise VizkitError("no digit found in the image: it has almost no contrast")
    a = np.clip((a - background) / (peak - background), 0.0, 1.0)
    a[a < 0.2] = 0.0  # paper texture and shadows are not ink

    rows, cols = np.nonzero(a)
    a = a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = a.shape
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    digit = F.interpolate(
        torch.from_numpy(a)[None, None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )[0, 0].numpy()
    digit /= max(float(digit.max()), 1e-6)

    # Centre of mass to the canvas centre, kept inside the canvas.
    ys, xs = np.indices(digit.shape)
    total = digit.sum()
    cy, cx = (ys * digit).sum() / total, (xs * digit).sum() / total
    top = int(np.clip(round((height - 1) / 2 - cy), 0, height - new_h))
    left = int(np.clip(round((width - 1) / 2 - cx), 0, width - new_w))
    out = np.zeros((height, width), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = digit
    return out


def prepare(
    img: Image.Image, input_shape: list[int] | tuple[int, ...], digits: bool = True, dark_background: bool = True
) -> torch.Tensor:
    """A photo -> the (1, C, H, W) float tensor of pixels in [0, 1] a model of `input_shape` expects.

    A grey model of `digits` gets the photo as MNIST's digits were made (mnist_style); any other model gets it
    fitted to its size, grey ones inverted where the photo's border is light and the training images'
    background is dark (`dark_background`, as in Fashion-MNIST), so the background matches what it learnt."""
    channels, height, width = input_shape[0], input_shape[-2], input_shape[-1]
    if channels == 1 and digits:  # the digit in MNIST's proportion, 20 of 28, of the shorter side
        box = round(min(height, width) * 20 / 28)
        return torch.from_numpy(mnist_style(img, size=(height, width), box=box))[None, None]
    # whole pictures (CIFAR-10, a person's own classes): just fit the photo
    fitted = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.LANCZOS)
    a = np.asarray(fitted, dtype=np.float32).reshape(height, width, channels) / 255.0
    if channels == 1 and dark_background and np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])) > 0.5:
        a = 1.0 - a
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def prepare_for(img: Image.Image, ckpt: dict) -> torch.Tensor:
    """prepare() as a checkpoint's model needs it: digits only for MNIST, its data's background from its mean."""
    digits = ckpt.get("dataset") == "mnist"
    return prepare(img, ckpt["input_shape"], digits, sum(ckpt["mean"]) / len(ckpt["mean"]) < 0.5)
