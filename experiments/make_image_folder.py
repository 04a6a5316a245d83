"""Lay a real dataset out as a folder of PNG files, a sub-folder per class: what `--dataset FOLDER` reads.

    python experiments/make_image_folder.py /tmp/fashion --dataset fashion-mnist --per-class 200
    python -m vizkit.train --dataset /tmp/fashion            # the default recipe on 2,000 real images

The images are the first N of each class in the official training set (and, with --test M, the first M of
each class of the test set under test/, with the training ones under train/). Class names become folder
names ("T-shirt/top" -> "T-shirt-top"). Fashion-MNIST comes from Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from vizkit.data import _ensure, _read_split, get_spec  # noqa: PLC2701 (the files as vizkit reads them)


def write(split, classes: tuple[str, ...], per_class: int, out: Path) -> int:  # noqa: ANN001
    written = 0
    for k, name in enumerate(classes):
        folder = out / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in (split.labels == k).nonzero().flatten()[:per_class].tolist():
            image = split.images[i].permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(image).save(folder / f"{i:05d}.png")
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/make_image_folder.py", description=__doc__.split("\n")[0])
    p.add_argument("out", help="the folder to write (must not exist)")
    p.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--per-class", type=int, default=200, help="training images per class (default: 200)")
    p.add_argument("--test", type=int, default=0, help="also M test images per class, under test/ (default: 0)")
    p.add_argument("--data-dir", default="data", help="where vizkit keeps its datasets (default: data)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists; give a new folder")
    spec = get_spec(args.dataset)
    _ensure(args.dataset, Path(args.data_dir))
    train = _read_split(args.dataset, Path(args.data_dir), train=True)
    n = write(train, spec.classes, args.per_class, out / "train" if args.test else out)
    if args.test:
        n += write(_read_split(args.dataset, Path(args.data_dir), train=False), spec.classes, args.test, out / "test")
    print(f"{n} images of {len(spec.classes)} classes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
