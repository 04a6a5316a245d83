"""python -m vizkit.train: train a model on MNIST (or another dataset) and leave a run directory to look into.

The run directory holds config.toml, last.pth, best.pth, model.onnx, metrics.json, curves.png and the
TensorBoard event file. `--model my_cnn.py:CNN` trains your own model. Ctrl-C or SIGTERM abandons the current
epoch and keeps the last finished one; `--resume RUN_DIR` continues from it. `torchrun --nproc_per_node=N -m
vizkit.train` trains with DDP. The loop lives in engine.py, what a run writes in run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from vizkit import config as cfgmod
from vizkit import distributed
from vizkit.checkpoint import read_checkpoint, trusted_spec
from vizkit.cli import run_cli
from vizkit.config import TrainConfig
from vizkit.data import get_spec, is_folder_dataset, load_dataset
from vizkit.distributed import Dist
from vizkit.engine import Interrupted, StopFlag, fit, pick_device
from vizkit.errors import VizkitError
from vizkit.files import atomic_write_text
from vizkit.models import absolute_spec, display_name, get_model, list_models
from vizkit.run import new_run_dir


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m vizkit.train",
        description="Train a CNN and log everything needed to see inside it to a run directory. "
        "Settings come from the defaults (the recipe 'default'), then --config, then the flags below.",
        epilog="Validation: the last 5000 images of the official training set (--set val_size=N to change), "
        "never trained on; the test set is used once, for the final evaluation of the best epoch. "
        "View a run with: tensorboard --logdir runs --samples_per_plugin images=100",
    )

    def flag(name: str, help: str, **kw: Any) -> None:
        field = name.lstrip("-").replace("-", "_")
        default = getattr(d, field)
        text = f"{help} (default: {default!r})".replace("%", "%%")  # argparse %-formats help strings
        p.add_argument(name, default=None, help=text, **kw)

    p.add_argument(
        "--config",
        metavar="TOML",
        help="experiment file, or a recipe name: "
        + ", ".join(sorted(p.stem for p in cfgmod.RECIPES_DIR.glob("*.toml"))),
    )
    flag(
        "--model",
        f"model: {', '.join(list_models())}, or your own as PATH.py:NAME or package.module:NAME "
        "(NAME a class or a function returning an nn.Module; its arguments: --set model_args.KEY=VALUE)",
    )
    flag("--dataset", "dataset: mnist, fashion-mnist, cifar10, or a folder of your images, a sub-folder per class")
    flag("--epochs", "number of epochs", type=int)
    flag("--batch-size", "training batch size", type=int)
    flag("--lr", "learning rate (the peak rate with onecycle)", type=float)
    flag("--optimizer", "optimizer", choices=cfgmod.OPTIMIZERS)
    flag("--momentum", "SGD momentum", type=float)
    flag("--weight-decay", "weight decay", type=float)
    flag("--scheduler", "learning-rate schedule", choices=cfgmod.SCHEDULERS)
    flag("--seed", "random seed (runs are repeatable on CPU)", type=int)
    flag("--limit-train", "train on the first N training images only, 0 = all", type=int, metavar="N")
    flag("--data-dir", "where datasets live, in torchvision's layout")
    flag("--run-dir", "output directory; empty = runs/<date>-<time>-<model>", metavar="DIR")
    flag("--device", "device", choices=cfgmod.DEVICES)
    flag("--log", "TensorBoard logging: full, scalars only, or off", choices=cfgmod.LOG_LEVELS)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last.pth and config.toml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key, e.g. --set augment=true --set log_every=100 (keys: "
        + ", ".join(cfgmod.FIELDS)
        + ")",
    )
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the TOML file, then --set, then the named flags; with --resume, the run's own config."""
    overrides = dict(cfgmod.parse_assignment(s) for s in args.set)
    for name in cfgmod.FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.resume:
        changed = sorted(set(overrides) - {"device", "data_dir", "model"})  # --model: your copy of the code
        if args.config or changed:
            given = ", ".join(["config"] * bool(args.config) + changed)
            raise VizkitError(f"--resume continues a run with its own config.toml; leave out: {given}")
        config_file = Path(args.resume) / "config.toml"
        if not config_file.is_file():
            raise VizkitError(
                f"{args.resume} is not a run directory (no config.toml); give one written by vizkit.train"
            )
        cfg = cfgmod.from_dict(overrides, "command line", cfgmod.load_config(str(config_file)))
    else:
        cfg = cfgmod.load_config(args.config) if args.config else TrainConfig()
        cfg = cfgmod.from_dict(overrides, "command line", cfg)
    # a model file and an image folder are recorded by their absolute paths: the run resumes and opens anywhere
    dataset = str(Path(cfg.dataset).expanduser().resolve()) if is_folder_dataset(cfg.dataset) else cfg.dataset
    return dataclasses.replace(cfg, model=absolute_spec(cfg.model), dataset=dataset)


RESUME_MAY_CHANGE = ("device", "data_dir", "run_dir", "model")  # where it runs, and --model (checked above)


def load_resume(run_dir: Path, cfg: TrainConfig, named_model: bool) -> dict[str, Any]:
    """last.pth to continue from. Unless the person named the model (--model), its code must be what last.pth
    recorded, under checkpoint.py's trust rule, and config.toml must name that same model: a run directory
    from someone else never gets its code imported by --resume."""
    last = run_dir / "last.pth"
    ckpt = read_checkpoint(last)
    if not named_model:
        if (cfg.model, cfg.model_args) != (ckpt["model"], ckpt.get("model_args") or {}):
            raise VizkitError(
                f"{run_dir / 'config.toml'} names model {cfg.model!r} but {last} was trained with {ckpt['model']!r}; "
                "a run directory edited by hand is not resumed (pass --model PATH.py:NAME to choose the code)"
            )
        trusted_spec(ckpt, last)
    if "resume" not in ckpt:
        raise VizkitError(f"{run_dir / 'last.pth'} has no training state to resume from; train a new run")
    # the schedule, the split and the model were made from the config it was trained with: an edit would
    # resume a different run (OneCycleLR past its last step, another split), so config.toml must still say it
    trained, now = ckpt["config"], cfg.to_dict()
    edited = [f"{k}: {trained[k]!r} -> {now[k]!r}" for k in sorted(trained)
              if k in now and k not in RESUME_MAY_CHANGE and trained[k] != now[k]]  # fmt: skip
    if edited:
        raise VizkitError(
            f"{run_dir / 'config.toml'} was edited since training ({'; '.join(edited[:3])}); --resume continues "
            "the run as it was trained: put it back, or train a new run with --config"
        )
    if ckpt["epoch"] >= cfg.epochs and (run_dir / "metrics.json").is_file():
        raise VizkitError(f"{run_dir} already finished its {cfg.epochs} epochs; nothing to resume")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = resolve_config(args)
        d, device = distributed.init(pick_device(cfg.device))
        try:
            resume_dir = Path(args.resume) if args.resume else None
            return train_main(cfg, d, device, resume_dir, named_model=args.model is not None)
        finally:
            distributed.shutdown(d)

    return run_cli(body, "vizkit.train")


def train_main(
    cfg: TrainConfig, d: Dist, device: torch.device, resume_dir: Path | None, named_model: bool = True
) -> int:
    # before any model code is imported: a resumed run's code must pass the trust rule
    resume = load_resume(resume_dir, cfg, named_model) if resume_dir else None
    if cfg.batch_size % d.world:
        raise VizkitError(
            f"--batch-size {cfg.batch_size} is the global batch and does not divide among {d.world} processes; "
            f"use a multiple of {d.world}"
        )
    spec = get_spec(cfg.dataset, cfg.image_size)
    if cfg.mean and len(cfg.mean) != spec.channels:  # before any data is read or a run directory made
        raise VizkitError(f"mean and std have {len(cfg.mean)} value(s) but {cfg.dataset} has {spec.channels} "
                          "channel(s); give one per channel")  # fmt: skip
    # an unknown model, or one that does not fit the dataset, fails here, before any data is loaded
    get_model(cfg.model, spec.channels, spec.size, len(spec.classes), cfg.model_args)
    if not d.main:
        distributed.barrier(d)  # rank 0 fetches the data first; the others then read it
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.val_size, cfg.seed, cfg.image_size)
    if d.main:
        distributed.barrier(d)
    if resume_dir:
        run_dir = resume_dir
    else:
        made = str(new_run_dir(cfg.run_dir, display_name(cfg.model))) if d.main else ""
        run_dir = Path(distributed.broadcast_text(d, made))
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        if d.main:
            atomic_write_text(run_dir / "config.toml", cfgmod.to_toml(cfg))
    if d.main:
        what = f"resuming {run_dir} at epoch {resume['epoch'] + 1}" if resume else f"run: {run_dir}"
        procs = f" x {d.world} processes" if d.enabled else ""
        print(
            f"training {display_name(cfg.model)} on {cfg.dataset} ({len(data.train)} images) on {device}{procs}; {what}"
        )
    stop = StopFlag()
    try:
        with stop.installed():
            metrics = fit(cfg, data, run_dir, device, d=d, stop=stop, resume=resume)
    except Interrupted as exc:
        if d.main:
            last = read_checkpoint(run_dir / "last.pth")["epoch"] if (run_dir / "last.pth").is_file() else 0
            kept = f"epoch {last} is saved in {run_dir / 'last.pth'}" if last else "no epoch had finished"
            print(f"vizkit.train: interrupted ({exc}); {kept}. Resume with: python -m vizkit.train --resume {run_dir}",
                  file=sys.stderr)  # fmt: skip
        return 128 + exc.signum
    if metrics is not None:
        print(
            f"test accuracy {100 * metrics['test_accuracy']:.2f}% (loss {metrics['test_loss']:.4f}) "
            f"after {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''} in {metrics['train_seconds']:.1f} s; "
            f"run directory: {run_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
