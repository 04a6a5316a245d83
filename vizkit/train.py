"""python -m vizkit.train: train a model on MNIST (or another dataset) and leave a run directory to look into.

The run directory holds config.toml, last.pth, best.pth, model.onnx, metrics.json, curves.png and the
TensorBoard event file. Ctrl-C or SIGTERM abandons the current epoch and keeps the last finished one;
`--resume RUN_DIR` continues from it. `torchrun --nproc_per_node=N -m vizkit.train` trains with DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vizkit import config as cfgmod
from vizkit import distributed
from vizkit.analysis import (
    confusion_matrix,
    format_summary,
    model_summary,
    penultimate_layer,
    per_class_accuracy,
    predict_split,
    top_losses,
)
from vizkit.cli import run_cli
from vizkit.config import TrainConfig
from vizkit.data import Dataset, Split, batches, load_dataset, num_batches
from vizkit.distributed import Dist
from vizkit.errors import VizkitError
from vizkit.export import check_onnx, export_onnx, read_checkpoint, save_checkpoint
from vizkit.files import atomic_write_text
from vizkit.logger import RunLogger
from vizkit.models import conv_layer_names, get_model, list_models
from vizkit.plots import confusion_figure, curves_figure, save_figure, top_losses_figure

log = logging.getLogger(__name__)

FEATURE_BATCH = 4  # validation images whose feature maps are logged each epoch
STATS_BATCH = 256  # validation images for the per-epoch activation statistics
ONNX_TOLERANCE = 1e-4


@dataclasses.dataclass
class EpochResult:
    loss: float
    accuracy: float
    seconds: float
    images: int


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise VizkitError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def memory_format(model: nn.Module) -> torch.memory_format:
    # NHWC: oneDNN's conv and max-pool kernels are faster in it (profile of recipe 001 on 2 cores: max-pool
    # from 28% of a step to 11%, a step from 4.6 to 3.7 ms). Models without convolutions stay as they are.
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_conv else torch.contiguous_format


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The scheduler, and whether it steps every batch (True) or every epoch (False)."""
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total), True
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), False
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs), False
    return None, False


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the current epoch is abandoned."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """SIGINT and SIGTERM set it and the training loop checks it between steps, so no write is cut in half.

    A second signal is not caught: it stops the process at once (the files are still whole, see files.py).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, self._handle)
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclasses.dataclass
class Loop:
    """Everything one training epoch needs."""

    cfg: TrainConfig
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    model: nn.Module  # the model itself: hooks, checkpoints and evaluation use it
    trainer: nn.Module  # what the training step calls: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    per_batch: bool
    generator: torch.Generator
    logger: RunLogger
    dist: Dist
    stop: StopFlag
    steps_per_epoch: int
    run_dir: Path


def train_one_epoch(loop: Loop, split: Split, epoch: int, bar: tqdm) -> EpochResult:
    cfg, d = loop.cfg, loop.dist
    loop.trainer.train()
    start = time.perf_counter()
    device = split.labels.device
    # Sums stay on the device and are read once per log interval: a .item() per step would sync every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    interval_loss = torch.zeros((), device=device)
    bad_step = torch.zeros((), device=device, dtype=torch.int64)  # first step whose loss was NaN or inf
    interval_n = 0
    seen = 0
    step = (epoch - 1) * loop.steps_per_epoch
    layout = memory_format(loop.model)
    per_rank = max(1, cfg.batch_size // d.world)  # --batch-size is the global batch
    for x, y in batches(
        split, per_rank, *loop.norm, shuffle=True, generator=loop.generator, augment=cfg.augment,
        memory_format=layout, shard=(d.rank, d.world),
    ):  # fmt: skip
        if distributed.any_rank(d, loop.stop.signum is not None, device):
            raise Interrupted(loop.stop.signum or signal.SIGTERM)
        logits = loop.trainer(x)
        loss = F.cross_entropy(logits, y)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if loop.scheduler is not None and loop.per_batch:
            loop.scheduler.step()
        step += 1
        seen += len(y)
        batch_loss = loss.detach()
        loss_sum += batch_loss * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        interval_loss += batch_loss
        bad_step = torch.where((bad_step == 0) & ~torch.isfinite(batch_loss), step, bad_step)
        interval_n += 1
        if step % cfg.log_every == 0:
            check_finite(loop, bad_step, batch_loss, epoch)
            mean_loss = (interval_loss / interval_n).item()
            loop.logger.scalars({"loss/train_step": mean_loss}, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
            interval_loss.zero_()
            interval_n = 0
        bar.update(1)
    check_finite(loop, bad_step, loss_sum, epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    totals = distributed.all_sum(d, torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen).double()]))
    return EpochResult(float(totals[0] / totals[2]), float(totals[1] / totals[2]), seconds, int(totals[2]))


def check_finite(loop: Loop, bad_step: torch.Tensor, value: torch.Tensor, epoch: int) -> None:
    """Stop on a NaN or infinite loss, naming the step and the learning rate; last.pth stays as it was."""
    first_bad = int(bad_step.item())
    if first_bad:
        kind = "NaN" if torch.isnan(value).item() else "infinite"
        lr = loop.optimizer.param_groups[0]["lr"]
        kept = f"{loop.run_dir / 'last.pth'} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was finished"
        raise VizkitError(
            f"the loss became {kind} at step {first_bad} (epoch {epoch}, lr {lr:.3g}); training stopped and {kept}. "
            "Lower --lr (or check the data) and train again"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    d: Dist = distributed.SINGLE,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) over a whole split, in eval mode; with several processes,
    each takes a share and the sums are added, so the result equals a single-process evaluation."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=split.labels.device, dtype=torch.float64)  # loss, correct
    for x, y in batches(split, batch_size, *norm, memory_format=memory_format(model), shard=(d.rank, d.world)):
        logits = model(x)
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
    model.train(was_training)
    distributed.all_sum(d, sums)
    return float(sums[0]) / len(split), float(sums[1]) / len(split)


def new_run_dir(cfg: TrainConfig) -> Path:
    """runs/<date>-<time>-<model> (never an existing one), or the --run-dir given, which must be new or empty."""
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise VizkitError(f"run directory {path} already exists and is not empty; choose a new --run-dir")
    else:
        base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise VizkitError(
            f"cannot write the run directory {path}: {exc.strerror or exc}; choose another --run-dir"
        ) from None
    return path


def resume_state(loop: Loop, history: list[dict], best_acc: float, best_epoch: int) -> dict[str, Any]:
    """What last.pth needs beyond the weights for --resume to continue exactly where the run stopped."""
    return {
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": loop.generator.get_state(),
        "history": history,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
    }


def fit(
    cfg: TrainConfig,
    data: Dataset,
    run_dir: Path,
    device: torch.device,
    *,
    d: Dist = distributed.SINGLE,
    stop: StopFlag | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Train, evaluate and export; returns the metrics written to metrics.json (None on ranks other than 0).

    `resume` is a last.pth checkpoint to continue from: weights, optimiser, scheduler, RNG states and history.
    """
    spec = data.spec
    mean = tuple(cfg.mean) or spec.mean
    std = tuple(cfg.std) or spec.std
    norm = (mean, std)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = get_model(cfg.model, spec.channels, spec.size, len(spec.classes))
    model = model.to(device, memory_format=memory_format(model))
    trainer = DistributedDataParallel(model) if d.enabled else model
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = num_batches(train, max(1, cfg.batch_size // d.world), d.world)
    scheduler, per_batch = make_scheduler(cfg, optimizer, steps_per_epoch)
    conv_layers = conv_layer_names(model)
    feature_batch = next(batches(val, FEATURE_BATCH, *norm))[0]
    stats_batch = next(batches(val, STATS_BATCH, *norm, memory_format=memory_format(model)))[0]
    checkpoint_fields = {
        "model": cfg.model,
        "config": cfg.to_dict(),
        "classes": list(spec.classes),
        "mean": list(mean),
        "std": list(std),
        "input_shape": [spec.channels, spec.size, spec.size],
        "dataset": spec.name,
    }

    history: list[dict[str, float]] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 1
    if resume is not None:
        state = resume["resume"]
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        generator.set_state(state["generator"])
        history, best_acc, best_epoch = list(state["history"]), state["best_val_accuracy"], state["best_epoch"]
        start_epoch = resume["epoch"] + 1
    purge = (start_epoch - 1) * steps_per_epoch + 1 if resume is not None else None
    level = cfg.log if d.main else "off"
    with RunLogger(run_dir, level, cfg.epochs, purge_step=purge) as logger:
        loop = Loop(
            cfg, norm, model, trainer, optimizer, scheduler, per_batch, generator, logger, d, stop or StopFlag(),
            steps_per_epoch, run_dir,
        )  # fmt: skip
        if resume is None:
            summary = format_summary(model_summary(model, checkpoint_fields["input_shape"]))
            if d.main:
                print(summary)
            logger.text("model/summary", "```\n" + summary + "\n```")
            logger.text("config", "```\n" + cfgmod.to_toml(cfg) + "```")
            logger.samples(train.images[:20], train.labels[:20], spec.classes)
        traced = logger.graph(model, feature_batch) if resume is None else True
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch}/{cfg.epochs}"
            with tqdm(
                total=steps_per_epoch, desc=desc, unit="batch", leave=False, disable=None if d.main else True
            ) as bar:
                result = train_one_epoch(loop, train, epoch, bar)
            if scheduler is not None and not per_batch:
                scheduler.step()
            val_loss, val_acc = evaluate(model, val, cfg.eval_batch_size, norm, d)
            row = {
                "epoch": epoch,
                "train_loss": result.loss,
                "train_accuracy": result.accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
                "seconds": result.seconds,
                "images_per_second": result.images / result.seconds,
            }
            history.append(row)
            logger.scalars(
                {
                    "loss/train": result.loss,
                    "loss/val": val_loss,
                    "accuracy/train": result.accuracy,
                    "accuracy/val": val_acc,
                    "lr": lr,
                    "speed/images_per_second": row["images_per_second"],
                    "speed/epoch_seconds": result.seconds,
                },
                epoch,
            )
            logger.feature_maps(model, conv_layers, feature_batch, epoch)
            logger.histograms(model, epoch)
            logger.activations(model, stats_batch, epoch)
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
            # training + validation + logging + checkpoints: what an epoch costs the person waiting
            row["wall_seconds"] = time.perf_counter() - epoch_start
            if d.main:
                print(
                    f"{desc}: train loss {result.loss:.4f} acc {100 * result.accuracy:.2f}% | "
                    f"val loss {val_loss:.4f} acc {100 * val_acc:.2f}% | "
                    f"{result.seconds:.1f} s, {row['images_per_second']:.0f} img/s",
                    flush=True,
                )
                fields = {**checkpoint_fields, "epoch": epoch, "val_accuracy": val_acc}
                if best_epoch == epoch:
                    save_checkpoint(run_dir / "best.pth", model, **fields)
                # last.pth last: once it names this epoch, everything of this epoch is on disk
                save_checkpoint(
                    run_dir / "last.pth", model, **fields, resume=resume_state(loop, history, best_acc, best_epoch)
                )

        if not d.main:
            return None
        # The final numbers come from the best epoch's weights (by validation accuracy), on rank 0 alone, in one
        # pass over the whole test set that also gives what the analysis needs: per image, probabilities,
        # loss and penultimate features.
        best = torch.load(run_dir / "best.pth", map_location=device, weights_only=True)
        model.load_state_dict(best["state_dict"])
        pred = predict_split(model, test, norm, cfg.eval_batch_size, penultimate_layer(model), memory_format(model))
        test_loss, test_acc = pred.losses.mean().item(), pred.accuracy
        cm = confusion_matrix(pred.labels, pred.preds, len(spec.classes))
        per_class = per_class_accuracy(cm)
        worst = top_losses(pred)
        figures = {
            "confusion_matrix": confusion_figure(cm, spec.classes),
            "top_losses": top_losses_figure(
                data.test.images[worst], pred.labels[worst], pred.preds[worst], pred.probs[worst].amax(1), spec.classes
            ),
        }
        for name, fig in figures.items():  # files for the report, images for TensorBoard
            save_figure(fig, run_dir / f"{name}.png")
        logger.evaluation(pred, per_class, figures, data.test.images, spec.classes, cfg.epochs)
        model.cpu().eval()
        onnx_path = export_onnx(model, mean, std, checkpoint_fields["input_shape"], run_dir / "model.onnx")
        onnx_diff = check_onnx(onnx_path, model, mean, std, data.test.images[:64].float() / 255)
        if onnx_diff > ONNX_TOLERANCE:
            log.warning("model.onnx differs from the torch model by %.2g (more than %g)", onnx_diff, ONNX_TOLERANCE)
        if not traced:
            logger.onnx_graph(onnx_path)
        metrics = {
            "dataset": spec.name,
            "model": cfg.model,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "best_epoch": best_epoch,
            "best_val_accuracy": best_acc,
            "train_seconds": sum(h["seconds"] for h in history),
            "processes": d.world,
            "confusion_matrix": cm.tolist(),
            "per_class_accuracy": per_class,
            "onnx_max_abs_diff": onnx_diff,
            "history": history,
        }
        logger.hparams(
            {k: v for k, v in cfg.to_dict().items() if k not in ("data_dir", "run_dir")},
            {"test_accuracy": test_acc, "test_loss": test_loss, "best_val_accuracy": best_acc},
        )
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    save_figure(curves_figure(history), run_dir / "curves.png")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m vizkit.train",
        description="Train a CNN and log everything needed to see inside it to a run directory. "
        "Settings come from the defaults (experiments/default.toml), then --config, then the flags below.",
        epilog="Validation: the last 5000 images of the official training set (--set val_size=N to change), "
        "never trained on; the test set is used once, for the final evaluation of the best epoch. "
        "View a run with: tensorboard --logdir runs --samples_per_plugin images=100",
    )

    def flag(name: str, help: str, **kw: Any) -> None:
        field = name.lstrip("-").replace("-", "_")
        default = getattr(d, field)
        text = f"{help} (default: {default!r})".replace("%", "%%")  # argparse %-formats help strings
        p.add_argument(name, default=None, help=text, **kw)

    p.add_argument("--config", metavar="TOML", help="experiment file, or a recipe name in experiments/ (e.g. 001-net)")
    flag("--model", f"model: {', '.join(list_models())}")
    flag("--dataset", "dataset: mnist, fashion-mnist, cifar10")
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
        changed = sorted(set(overrides) - {"device", "data_dir"})
        if args.config or changed:
            given = ", ".join(["config"] * bool(args.config) + changed)
            raise VizkitError(f"--resume continues a run with its own config.toml; leave out: {given}")
        config_file = Path(args.resume) / "config.toml"
        if not config_file.is_file():
            raise VizkitError(
                f"{args.resume} is not a run directory (no config.toml); give one written by vizkit.train"
            )
        return (
            cfgmod.load_config(str(config_file))
            if not overrides
            else cfgmod.from_dict(overrides, "command line", cfgmod.load_config(str(config_file)))
        )
    cfg = cfgmod.load_config(args.config) if args.config else TrainConfig()
    return cfgmod.from_dict(overrides, "command line", cfg)


def load_resume(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    ckpt = read_checkpoint(run_dir / "last.pth")
    if "resume" not in ckpt:
        raise VizkitError(f"{run_dir / 'last.pth'} has no training state to resume from; train a new run")
    if ckpt["epoch"] >= cfg.epochs and (run_dir / "metrics.json").is_file():
        raise VizkitError(f"{run_dir} already finished its {cfg.epochs} epochs; nothing to resume")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = resolve_config(args)
        d, device = distributed.init(pick_device(cfg.device))
        try:
            return train_main(cfg, d, device, Path(args.resume) if args.resume else None)
        finally:
            distributed.shutdown(d)

    return run_cli(body, "vizkit.train")


def train_main(cfg: TrainConfig, d: Dist, device: torch.device, resume_dir: Path | None) -> int:
    get_model(cfg.model)  # an unknown model fails here, before any data is loaded
    resume = load_resume(resume_dir, cfg) if resume_dir else None
    if not d.main:
        distributed.barrier(d)  # rank 0 fetches the data first; the others then read it
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.val_size)
    if d.main:
        distributed.barrier(d)
    if resume_dir:
        run_dir = resume_dir
    else:
        run_dir = Path(distributed.broadcast_text(d, str(new_run_dir(cfg)) if d.main else ""))
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        if d.main:
            atomic_write_text(run_dir / "config.toml", cfgmod.to_toml(cfg))
    if d.main:
        what = f"resuming {run_dir} at epoch {resume['epoch'] + 1}" if resume else f"run: {run_dir}"
        procs = f" x {d.world} processes" if d.enabled else ""
        print(f"training {cfg.model} on {cfg.dataset} ({len(data.train)} images) on {device}{procs}; {what}")
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
