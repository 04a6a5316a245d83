"""What the inspection commands share: which model to look at, and which input to show it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vizkit.checkpoint import find_checkpoint, open_checkpoint
from vizkit.cli import add_own_model_args
from vizkit.errors import VizkitError


@dataclass
class Sample:
    """One input: pixels in [0, 1] shaped (1, C, H, W) as the model takes them, and where they came from."""

    pixels: torch.Tensor
    name: str  # for file names: test-0, my-photo
    label: int | None = None
    original: np.ndarray | None = None  # the photo as the person gave it


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--run", metavar="RUN_DIR", help="a run directory (its best.pth); default: the newest run")
    group.add_argument(
        "--checkpoint", metavar="FILE", help="a .pth from vizkit.train, or your own state dict (with --model)"
    )
    add_own_model_args(parser)


def model_args_of(args: argparse.Namespace) -> dict[str, Any]:
    """--set model_args.KEY=VALUE, read as vizkit.train reads it."""
    from vizkit.config import parse_assignment

    values = {}
    for text in getattr(args, "model_args", None) or []:
        key, value = parse_assignment(text)
        if not key.startswith("model_args.") or key == "model_args.":
            raise VizkitError(f"--set here takes model_args.KEY=VALUE only, got '{text}'")
        values[key.partition(".")[2]] = value
    return values


def open_model(path: Path, args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    return open_checkpoint(path, args.model, args.mean, args.std, args.dataset, model_args_of(args))


def add_input_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--index", type=int, default=0, metavar="N", help="a test-set image (default: 0)")
    group.add_argument("--image", metavar="FILE", help="your own photo of a digit, prepared as MNIST's digits were")
    parser.add_argument("--data-dir", help="where the test set lives (default: the one the model was trained from)")


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model named by --run/--checkpoint (or the newest run), its checkpoint dict, and the checkpoint path."""
    path = find_checkpoint(args.run, args.checkpoint)
    model, ckpt = open_model(path, args)
    return model, ckpt, path


def load_sample(args: argparse.Namespace, ckpt: dict[str, Any]) -> Sample:
    if args.image:
        from vizkit.preprocess import load_image, prepare

        img = load_image(args.image)
        return Sample(prepare(img, ckpt["input_shape"]), Path(args.image).stem, None, np.asarray(img.convert("RGB")))
    from vizkit.data import load_test_split

    dataset = ckpt.get("dataset", "mnist")
    if dataset is None:
        raise VizkitError("this model's inputs match no known dataset, so there is no test image to show; give --image")
    data_dir = args.data_dir or ckpt["config"].get("data_dir", "data")
    test = load_test_split(dataset, data_dir)
    if not 0 <= args.index < len(test):
        raise VizkitError(f"--index {args.index} is out of range: the {dataset} test set has {len(test)} images")
    pixels = test.images[args.index : args.index + 1].float() / 255
    return Sample(pixels, f"test-{args.index}", int(test.labels[args.index]))
