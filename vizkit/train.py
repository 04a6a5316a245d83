"""python -m vizkit.train: train a model on MNIST (or another dataset) and leave a run directory to look into.

The run directory holds config.toml, last.pth, best.pth, model.onnx, metrics.json, curves.png and the
TensorBoard event file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vizkit import config as cfgmod
from vizkit.cli import run_cli
from vizkit.config import TrainConfig
from vizkit.data import Dataset, Split, batches, load_dataset, num_batches
from vizkit.errors import VizkitError
from vizkit.export import check_onnx, export_onnx, save_checkpoint
from vizkit.logger import RunLogger
from vizkit.models import conv_layer_names, get_model, list_models
from vizkit.plots import curves_figure, save_figure

log = logging.getLogger(__name__)

FEATURE_BATCH = 4  # validation images whose feature maps are logged each epoch
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


def train_one_epoch(
    model: nn.Module,
    split: Split,
    cfg: TrainConfig,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    per_batch: bool,
    generator: torch.Generator,
    logger: RunLogger,
    first_step: int,
    bar: tqdm,
) -> EpochResult:
    model.train()
    start = time.perf_counter()
    device = split.labels.device
    # Sums stay on the device and are read once per log interval: a .item() per step would sync every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    interval_loss = torch.zeros((), device=device)
    interval_n = 0
    seen = 0
    step = first_step
    layout = memory_format(model)
    for x, y in batches(
        split, cfg.batch_size, *norm, shuffle=True, generator=generator, augment=cfg.augment, memory_format=layout
    ):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None and per_batch:
            scheduler.step()
        step += 1
        seen += len(y)
        batch_loss = loss.detach()
        loss_sum += batch_loss * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        interval_loss += batch_loss
        interval_n += 1
        if step % cfg.log_every == 0:
            mean_loss = (interval_loss / interval_n).item()
            logger.scalars({"loss/train_step": mean_loss}, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
            interval_loss.zero_()
            interval_n = 0
        bar.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return EpochResult(loss_sum.item() / seen, correct.item() / seen, seconds, seen)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, norm: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), device=split.labels.device, dtype=torch.int64)
    for x, y in batches(split, batch_size, *norm, memory_format=memory_format(model)):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / len(split), correct.item() / len(split)


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


def fit(cfg: TrainConfig, data: Dataset, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Train, evaluate and export; returns the metrics written to metrics.json."""
    spec = data.spec
    mean = tuple(cfg.mean) or spec.mean
    std = tuple(cfg.std) or spec.std
    norm = (mean, std)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = get_model(cfg.model, spec.channels, spec.size, len(spec.classes))
    model = model.to(device, memory_format=memory_format(model))
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = num_batches(train, cfg.batch_size)
    scheduler, per_batch = make_scheduler(cfg, optimizer, steps_per_epoch)
    conv_layers = conv_layer_names(model)
    feature_batch = batches(val, FEATURE_BATCH, *norm).__next__()[0]
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
    best_acc, best_epoch = -1.0, 0
    with RunLogger(run_dir, cfg.log, cfg.epochs) as logger:
        logger.text("config", "```\n" + cfgmod.to_toml(cfg) + "```")
        logger.samples(train.images[:20], train.labels[:20], spec.classes)
        traced = logger.graph(model, feature_batch)
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch}/{cfg.epochs}"
            with tqdm(total=steps_per_epoch, desc=desc, unit="batch", leave=False, disable=None) as bar:
                result = train_one_epoch(
                    model, train, cfg, norm, optimizer, scheduler, per_batch, generator, logger,
                    (epoch - 1) * steps_per_epoch, bar,
                )  # fmt: skip
            if scheduler is not None and not per_batch:
                scheduler.step()
            val_loss, val_acc = evaluate(model, val, cfg.eval_batch_size, norm)
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
            print(
                f"{desc}: train loss {result.loss:.4f} acc {100 * result.accuracy:.2f}% | "
                f"val loss {val_loss:.4f} acc {100 * val_acc:.2f}% | "
                f"{result.seconds:.1f} s, {row['images_per_second']:.0f} img/s",
                flush=True,
            )
            fields = {**checkpoint_fields, "epoch": epoch, "val_accuracy": val_acc}
            save_checkpoint(run_dir / "last.pth", model, **fields)
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                save_checkpoint(run_dir / "best.pth", model, **fields)
            # training + validation + logging + checkpoints: what an epoch costs the person waiting
            row["wall_seconds"] = time.perf_counter() - epoch_start

        # The final numbers come from the best epoch's weights (by validation accuracy).
        best = torch.load(run_dir / "best.pth", map_location=device, weights_only=True)
        model.load_state_dict(best["state_dict"])
        test_loss, test_acc = evaluate(model, test, cfg.eval_batch_size, norm)
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
            "onnx_max_abs_diff": onnx_diff,
            "history": history,
        }
        logger.hparams(
            {k: v for k, v in cfg.to_dict().items() if k not in ("data_dir", "run_dir")},
            {"test_accuracy": test_acc, "test_loss": test_loss, "best_val_accuracy": best_acc},
        )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
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
    """Defaults, then the TOML file, then --set, then the named flags."""
    cfg = cfgmod.load_config(args.config) if args.config else TrainConfig()
    overrides = dict(cfgmod.parse_assignment(s) for s in args.set)
    for name in cfgmod.FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return cfgmod.from_dict(overrides, "command line", cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = resolve_config(args)
        device = pick_device(cfg.device)
        get_model(cfg.model)  # an unknown model fails here, before any data is loaded
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.val_size)
        run_dir = new_run_dir(cfg)
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        (run_dir / "config.toml").write_text(cfgmod.to_toml(cfg))
        print(f"training {cfg.model} on {cfg.dataset} ({len(data.train)} images) on {device}; run: {run_dir}")
        metrics = fit(cfg, data, run_dir, device)
        print(
            f"test accuracy {100 * metrics['test_accuracy']:.2f}% (loss {metrics['test_loss']:.4f}) "
            f"after {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''} in {metrics['train_seconds']:.1f} s; "
            f"run directory: {run_dir}"
        )
        return 0

    return run_cli(body, "vizkit.train")


if __name__ == "__main__":
    sys.exit(main())
