"""What the inspection commands share: which model to look at, and which input to show it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vizkit import rundir
from vizkit.checkpoint import open_checkpoint
from vizkit.cli import add_own_model_args
from vizkit.errors import VizkitError
from vizkit.rundir import find_checkpoint


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
    parser.add_argument("--epoch", type=int, metavar="N", help="the run's weights after epoch N (default: the best)")
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
    if getattr(args, "epoch", None) is not None:
        if args.checkpoint:
            raise VizkitError("--epoch takes a run's kept weights: give --run RUN_DIR, not --checkpoint")
        run = rundir.run_of(path)
        kept = rundir.epochs_in(run)
        if args.epoch not in kept:
            has = (
                f"epochs {', '.join(map(str, kept))}" if kept else "no epoch's weights (trained with keep_epochs false)"
            )
            raise VizkitError(f"{run} has no weights of epoch {args.epoch}; it keeps {has}")
        path = rundir.epoch_file(run, args.epoch)
    model, ckpt = open_model(path, args)
    return model, ckpt, path


@dataclass
class TestImages:
    """The images an inspection command shows by number: a run's test set, or the examples it kept."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # None: the examples a Run kept, whose labels it was not given
    what: str  # for messages: "the mnist test set"


def test_images(ckpt: dict[str, Any], checkpoint: Path | None = None, data_dir: str | None = None) -> TestImages:
    """The run's test set (data.test_split_of: found where training read it, never downloaded); where it has
    none on this machine, the examples it kept (a Run on data vizkit does not know); else one error."""
    from vizkit.data import test_split_of, trained_in

    dataset, examples = ckpt.get("dataset"), ckpt.get("examples")
    shape = list(ckpt["input_shape"])
    # a Run's dataset may be a guess from its input shape: its test set is used once the run knows where it is
    if dataset and (examples is None or isinstance(ckpt.get("data_dir"), str)):
        origin = trained_in(checkpoint) if checkpoint is not None else None
        config = {**ckpt["config"], **({"data_dir": ckpt["data_dir"]} if isinstance(ckpt.get("data_dir"), str) else {})}
        try:
            split = test_split_of(dataset, config, shape, origin, data_dir)
            return TestImages(split.images, split.labels, f"the {Path(dataset).name} test set")
        except VizkitError:
            if examples is None:
                raise
    if examples is not None:
        return TestImages(examples, None, "the examples the run kept")
    raise VizkitError("this run records no test set vizkit can find and no examples; give your own image with --image")


def load_sample(args: argparse.Namespace, ckpt: dict[str, Any], checkpoint: Path | None = None) -> Sample:
    """--image FILE, prepared for the model; else image --index of the run's test images (test_images)."""
    if args.image:
        from vizkit.preprocess import load_image, prepare_for

        img = load_image(args.image)
        return Sample(prepare_for(img, ckpt), Path(args.image).stem, None, np.asarray(img.convert("RGB")))
    test = test_images(ckpt, checkpoint, args.data_dir)
    if not 0 <= args.index < len(test.images):
        raise VizkitError(f"--index {args.index} is out of range: {test.what} has {len(test.images)} images")
    pixels = test.images[args.index : args.index + 1].float() / 255
    label = int(test.labels[args.index]) if test.labels is not None else None
    return Sample(pixels, f"{'test' if test.labels is not None else 'example'}-{args.index}", label)
