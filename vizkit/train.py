"""python -m vizkit.train: train a model on MNIST (or another dataset) and leave a run directory to look into.

The run directory holds config.toml, last.pth, best.pth, model.onnx, metrics.json, curves.png and the
TensorBoard event file. `--model my_cnn.py:CNN` trains your own model. Ctrl-C or SIGTERM abandons the current
epoch and keeps the last finished one; `--resume RUN_DIR` continues from it. `torchrun --nproc_per_node=N -m
vizkit.train` trains with DDP. The loop lives in engine.py, what a run writes in run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from vizkit import config as cfgmod
from vizkit import distributed, rundir
from vizkit.checkpoint import read_checkpoint, trusted_spec
from vizkit.cli import run_cli
from vizkit.config import TrainConfig
from vizkit.data import get_spec, is_folder_dataset, load_dataset
from vizkit.distributed import Dist
from vizkit.engine import Interrupted, StopFlag, fit, pick_device
from vizkit.errors import VizkitError, first_line
from vizkit.models import absolute_spec, display_name, get_model, is_user_model, list_models


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
        config_file = rundir.config_file(Path(args.resume))
        cfg = cfgmod.from_dict(overrides, "command line", cfgmod.load_config(str(config_file)))
    else:
        cfg = cfgmod.load_config(args.config) if args.config else TrainConfig()
        cfg = cfgmod.from_dict(overrides, "command line", cfg)
    # a model file and an image folder are recorded by their absolute paths: the run resumes and opens anywhere
    dataset = str(Path(cfg.dataset).expanduser().resolve()) if is_folder_dataset(cfg.dataset) else cfg.dataset
    return dataclasses.replace(cfg, model=absolute_spec(cfg.model), dataset=dataset)


log = logging.getLogger(__name__)

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
RESUME_MAY_CHANGE = ("device", "data_dir", "run_dir", "model")  # where it runs, and --model (checked above)


def load_resume(run_dir: Path, cfg: TrainConfig, named_model: bool) -> dict[str, Any] | None:
    """last.pth to continue from, or None for a run killed in its first epoch (it starts again). Unless the
    person named the model (--model), its code must be what last.pth recorded, under checkpoint.py's trust rule,
    and config.toml must name that same model: a run directory from someone else never gets its code imported by
    --resume (and one with no last.pth, nothing signed, only a zoo model)."""
    last = run_dir / rundir.LAST
    if not last.is_file():
        if is_user_model(cfg.model) and not named_model:
            raise VizkitError(
                f"{run_dir} finished no epoch, so nothing vouches for the code its config.toml names "
                f"({cfg.model}); pass --model PATH.py:NAME to choose it, or train a new run"
            )
        return None
    ckpt = read_checkpoint(last)
    if not named_model:
        if (cfg.model, cfg.model_args) != (ckpt["model"], ckpt.get("model_args") or {}):
            raise VizkitError(
                f"{run_dir / rundir.CONFIG} names model {cfg.model!r} but {last} was trained with "
                f"{ckpt['model']!r}; a run directory edited by hand is not resumed (pass --model PATH.py:NAME to "
                "choose the code)"
            )
        trusted_spec(ckpt, last)
    if "resume" not in ckpt:
        raise VizkitError(f"{last} has no training state to resume from; train a new run")
    # the schedule, the split and the model were made from the config it was trained with: an edit would
    # resume a different run (OneCycleLR past its last step, another split), so config.toml must still say it
    trained, now = ckpt["config"], cfg.to_dict()
    edited = [f"{k}: {trained[k]!r} -> {now[k]!r}" for k in sorted(trained)
              if k in now and k not in RESUME_MAY_CHANGE and trained[k] != now[k]]  # fmt: skip
    if edited:
        raise VizkitError(
            f"{run_dir / rundir.CONFIG} was edited since training ({'; '.join(edited[:3])}); --resume continues "
            "the run as it was trained: put it back, or train a new run with --config"
        )
    if ckpt["epoch"] >= cfg.epochs and rundir.is_finished(run_dir):
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
    if resume_dir is None or not d.main:
        return _train(cfg, d, device, resume_dir, named_model)
    rundir.lock(resume_dir)  # before last.pth is read: a second --resume of the run stops here, in one line
    try:
        return _train(cfg, d, device, resume_dir, named_model)
    finally:
        rundir.release(resume_dir)


def _train(cfg: TrainConfig, d: Dist, device: torch.device, resume_dir: Path | None, named_model: bool) -> int:
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
    run_dir, stop = resume_dir, StopFlag()
    try:
        run_dir, cfg = open_run_dir(cfg, d, resume_dir, resume)
        if d.main:
            what = f"resuming {run_dir} at epoch {resume['epoch'] + 1}" if resume else f"run: {run_dir}"
            procs = f" x {d.world} processes" if d.enabled else ""
            print(f"training {display_name(cfg.model)} on {cfg.dataset} ({len(data.train)} images) on {device}"
                  f"{procs}; {what}")  # fmt: skip
        with stop.installed():
            metrics = fit(cfg, data, run_dir, device, d=d, stop=stop, resume=resume)
    except Interrupted as exc:
        if d.main:
            print(f"vizkit.train: interrupted ({exc}); {kept(run_dir, discard=True)}", file=sys.stderr)
        return 128 + exc.signum
    except OSError as exc:  # a full disk, a failing one: the run stays as it was at its last good epoch
        if not d.main or exc.errno not in DISK_ERRORS:
            raise
        after = f"; training stopped and {kept(run_dir)}" if run_dir else ""
        raise VizkitError(disk_failure(exc, run_dir) + after) from None
    finally:
        if run_dir is not None:
            rundir.release(run_dir)
    if metrics is not None:
        print(
            f"test accuracy {100 * metrics['test_accuracy']:.2f}% (loss {metrics['test_loss']:.4f}) "
            f"after {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''} in {metrics['train_seconds']:.1f} s; "
            f"run directory: {run_dir}{kept_epochs(run_dir)}"
        )
    return 0


def open_run_dir(
    cfg: TrainConfig, d: Dist, resume_dir: Path | None, resume: dict[str, Any] | None
) -> tuple[Path, TrainConfig]:
    """The run directory, locked (rank 0): a new one with config.toml, or the one resumed, taken back to its
    last finished epoch (rundir.reopen)."""
    if resume_dir:
        if d.main:
            state = resume["resume"] if resume else {"logs": {}}  # no epoch finished: everything starts again
            if state.get("logs") is None:
                log.warning("%s was written by an older vizkit: what it logged after epoch %s stays in its "
                            "event logs, and may show twice", resume_dir, resume["epoch"])  # fmt: skip
            rundir.reopen(resume_dir, state.get("logs"))
        return resume_dir, cfg
    made = str(rundir.create(cfg.run_dir, display_name(cfg.model))) if d.main else ""
    run_dir = Path(distributed.broadcast_text(d, made))
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    if d.main:
        try:
            rundir.write_config(run_dir, cfgmod.to_toml(cfg))
        except OSError:
            rundir.discard(run_dir)  # a run with no config.toml can be neither resumed nor reused
            raise
    return run_dir, cfg


def kept_epochs(run_dir: Path) -> str:
    """What keeping each epoch's weights costs on disk (`--set keep_epochs=false` keeps none)."""
    epochs = rundir.epochs_in(run_dir)
    if not epochs:
        return ""
    size = sum(rundir.epoch_file(run_dir, n).stat().st_size for n in epochs) / 1e6
    return f" ({len(epochs)} epochs' weights in {rundir.EPOCHS}/, {size:.1f} MB; --set keep_epochs=false keeps none)"


def kept(run_dir: Path, discard: bool = False) -> str:
    """What a stopped run keeps, and how to go on; with `discard`, a run that finished no epoch is removed."""
    last = run_dir / rundir.LAST
    if last.is_file():
        epoch = read_checkpoint(last)["epoch"]
        return f"epoch {epoch} is saved in {last}. Resume with: python -m vizkit.train --resume {run_dir}"
    if discard:
        rundir.discard(run_dir)
        return f"no epoch had finished, so nothing can be resumed; {run_dir} was removed"
    return f"no epoch had finished. Resume with: python -m vizkit.train --resume {run_dir}"


def disk_failure(exc: OSError, run_dir: Path | None) -> str:
    """`the disk holding runs/x (mounted at /mnt/small) is full (No space left on device)`: one line."""
    where = Path(exc.filename) if exc.filename else (run_dir or Path.cwd())
    mount = Path(os.path.abspath(where))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "failed a write"
    return f"the disk holding {run_dir or where} (mounted at {mount}) {what} ({exc.strerror or first_line(exc)})"


if __name__ == "__main__":
    sys.exit(main())
