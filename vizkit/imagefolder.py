"""A person's own images in torchvision's ImageFolder layout: a folder per class, read into uint8 splits.

    shapes/circle/001.png  shapes/square/002.png ...          one folder: test and validation split off
    shapes/train/circle/... shapes/test/circle/...            already split: test/ is the test set

What fastai's `ImageDataLoaders.from_folder` and Keras' `image_dataset_from_directory` read. Class names are the
folder names, sorted (ImageFolder's order). Grey or colour comes from the images (grey only if every image
is); every image is resized to the same square side, the most common one unless given. The split is seeded
and stratified: with no test/, a sixth of each class is the test set; a tenth of the rest is validation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vizkit.errors import VizkitError, first_line

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_FRACTION = 1 / 6  # with no test/ folder: MNIST's 10,000 of 60,000
VAL_FRACTION = 0.1
MAX_CLASSES, MAX_FILES = 1000, 500_000  # past these, a folder is not a dataset (a checkpoint that names "/")


@dataclass(frozen=True)
class Listing:
    """The files of an image folder, by class, and how they will be read."""

    root: Path
    classes: tuple[str, ...]
    train: list[tuple[Path, int]]  # (file, class index), in a fixed order
    test: list[tuple[Path, int]]  # empty: split off from train
    channels: int
    side: int


def looks_like_folder(name: str) -> bool:
    """A --dataset value that names a folder rather than a known dataset."""
    return "/" in name or name.startswith(".") or Path(name).is_dir()


def _files(folder: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        files = []
        for p in class_dir.rglob("*"):  # ** follows no symbolic link
            if p.suffix.lower() in EXTENSIONS and p.is_file():
                files.append(p)
                if len(found) + len(files) > MAX_FILES:
                    raise VizkitError(f"{folder} holds more than {MAX_FILES:,} images; give a smaller folder")
        found += [(p, index) for p in sorted(files)]
    return found


def list_folder(path: str | Path, side: int = 0) -> Listing:
    """Find the classes and files, and read each image's header for its mode and size (no pixels yet)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise VizkitError(f"--dataset {path}: no such folder; give a folder with a sub-folder of images per class")
    split = (root / "train").is_dir()
    train_dir = root / "train" if split else root
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith(".")))
    layout = f"{train_dir}/<class>/<image>.png"
    if len(classes) > MAX_CLASSES:
        raise VizkitError(f"{train_dir} has {len(classes)} sub-folders, more than {MAX_CLASSES} classes: {layout}")
    if len(classes) < 2:
        raise VizkitError(f"{train_dir} has {len(classes)} class folder(s); a classifier needs two or more: {layout}")
    train = _files(train_dir, classes)
    test = _files(root / "test", classes) if split and (root / "test").is_dir() else []
    extra = sorted(
        d.name for d in (root / "test").iterdir() if d.is_dir() and d.name not in classes
    ) if test else []  # fmt: skip
    if extra:
        raise VizkitError(f"{root / 'test'} has class folders that train/ has not: {', '.join(extra)}")
    counts = Counter(label for _, label in train)
    empty = [c for i, c in enumerate(classes) if counts[i] == 0]
    if empty:
        raise VizkitError(f"class folder(s) {', '.join(empty)} in {train_dir} hold no images ({', '.join(EXTENSIONS)})")
    modes, sizes = set(), Counter()
    for file, _ in train + test:
        try:
            with Image.open(file) as img:
                modes.add(img.mode)
                sizes[max(img.size)] += 1
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise VizkitError(f"{file} is not a readable image ({first_line(exc)}); remove it or replace it") from None
    channels = 1 if modes <= set(GREY_MODES) else 3
    return Listing(root, classes, train, test, channels, side or sizes.most_common(1)[0][0])


def read_images(files: list[tuple[Path, int]], channels: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, side, side) and int64 labels; each image converted to grey or RGB and resized to side x side."""
    from PIL import Image

    images = np.empty((len(files), side, side, channels), dtype=np.uint8)
    for i, (file, _) in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (side, side):
                    img = img.resize((side, side), Image.Resampling.BILINEAR)
                images[i] = np.asarray(img).reshape(side, side, channels)
        except (OSError, Image.DecompressionBombError) as exc:  # cut short, or changed since it was listed
            raise VizkitError(f"{file} could not be read ({first_line(exc)}); remove it or replace it") from None
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def stratified(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices split into (kept, taken): `fraction` of each class taken (at least one where a class has two or
    more), by a seeded permutation, so the same folder and seed always give the same split."""
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    kept, taken = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[j] for j in torch.randperm(len(members), generator=gen).tolist()]
        n = round(len(members) * fraction) if len(members) > 1 else 0
        n = max(n, 1) if len(members) > 1 else 0
        taken += order[:n]
        kept += order[n:]
    return sorted(kept), sorted(taken)


def split_files(listing: Listing, seed: int) -> tuple[list, list, list]:
    """(train, val, test) file lists: test/ if the folder has one, else a stratified sixth; then a tenth of the
    rest for validation."""
    files, test = listing.train, listing.test
    if not test:
        kept, taken = stratified([label for _, label in files], TEST_FRACTION, seed)
        files, test = [files[i] for i in kept], [files[i] for i in taken]
    kept, taken = stratified([label for _, label in files], VAL_FRACTION, seed + 1)
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed + 2)).tolist()
    # the training files shuffled, so that --limit-train N takes N of every class, not the first classes
    return [files[kept[i]] for i in order], [files[i] for i in taken], test


def mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (what Normalize is given), from float64 sums
    over chunks of images (no float64 copy of the whole split); a flat channel's std is taken as 1."""
    sums = torch.zeros(2, images.shape[1], dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].transpose(0, 1).flatten(1).double().div_(255)
        sums += torch.stack([x.sum(1), x.square().sum(1)])
    n = images.numel() // images.shape[1]
    mean = sums[0] / n
    std = ((sums[1] - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) if v > 0 else 1.0 for v in std.tolist())
