"""vizkit's own training loop: epochs and steps, resume state, signals and DDP. It reports to a Run.

train.py is its command line; a hand-written loop uses Run directly and needs none of this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vizkit import distributed, graph, rundir
from vizkit.allocator import freed_memory_kept
from vizkit.checkpoint import load_weights
from vizkit.config import TrainConfig
from vizkit.data import Dataset, DatasetSpec, Split, batches, is_folder_dataset, num_batches
from vizkit.distributed import Dist
from vizkit.errors import VizkitError
from vizkit.graph import first_tensor
from vizkit.hooks import modes_kept
from vizkit.models import display_name, get_model, is_user_model
from vizkit.run import Run

log = logging.getLogger(__name__)

FEATURE_BATCH = 4  # validation images whose feature maps are logged each epoch
STATS_BATCH = 256  # validation images for the per-epoch activation statistics


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


def memory_format(model: nn.Module, spec: str) -> torch.memory_format:
    # NHWC: oneDNN's conv and max-pool kernels are faster in it (profile of recipe 001 on 2 cores: max-pool
    # from 28% of a step to 11%, a step from 4.6 to 3.7 ms). Only for the zoo, whose models were measured:
    # a user's model may flatten with .view(), which NHWC tensors refuse, and has not been measured.
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_conv and not is_user_model(spec) else torch.contiguous_format


def output_kind(model: nn.Module, spec: str, data: DatasetSpec) -> str:
    """What the model returns; a model that ends in softmax is trained on the log of its probabilities, and
    says so (CrossEntropyLoss on probabilities is the mistake recipe 002's tutorial makes)."""
    kind = graph.forward_graph(model, [data.channels, data.size, data.size]).output_kind
    if kind == "probabilities":
        log.warning("model '%s' ends in softmax: vizkit trains it on the log of its probabilities (the cross-entropy "
                    "of what came before the softmax); return the logits instead", display_name(spec))  # fmt: skip
    return kind


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


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

    def raise_if_set(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

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
    run: Run | None  # what the epoch is reported to (rank 0 only)
    dist: Dist
    stop: StopFlag
    steps_per_epoch: int
    run_dir: Path
    layout: torch.memory_format
    output: str = "logits"  # what the model returns (graph.Graph.output_kind): the loss takes it as it is


def train_one_epoch(loop: Loop, split: Split, epoch: int, bar: tqdm) -> EpochResult:
    cfg, d = loop.cfg, loop.dist
    loop.trainer.train()
    start = time.perf_counter()
    device = split.labels.device
    per_rank = max(1, cfg.batch_size // d.world)  # --batch-size is the global batch
    # Each step's loss and hits go into a slot here, on the device, and are read once per log interval: a
    # .item() per step would sync every step, and running sums with a NaN check took 13 small ops a step
    # where the slots take 7 (profile_epoch.py: 3% of recipe 001's step)
    losses = torch.zeros(num_batches(split, per_rank, d.world), device=device)
    hits = torch.zeros(len(losses), device=device, dtype=torch.int64)
    sizes: list[int] = []
    first = (epoch - 1) * loop.steps_per_epoch  # the global step before this epoch's first
    logged = 0  # steps of this epoch already in a logged interval
    for x, y in batches(
        split, per_rank, *loop.norm, shuffle=True, generator=loop.generator, augment=cfg.augment,
        memory_format=loop.layout, shard=(d.rank, d.world),
    ):  # fmt: skip
        if distributed.any_rank(d, loop.stop.signum is not None, device):
            raise Interrupted(loop.stop.signum or signal.SIGTERM)
        logits = first_tensor(loop.trainer(x), loop.model)  # a tuple output: its first tensor, as 004's loop does
        loss = graph.loss(logits, y, loop.output)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if loop.scheduler is not None and loop.per_batch:
            loop.scheduler.step()
        i = len(sizes)
        losses[i] = loss.detach()
        hits[i] = (logits.detach().argmax(1) == y).sum()
        sizes.append(len(y))
        if (first + i + 1) % cfg.log_every == 0:
            check_finite(loop, losses[: i + 1], first, epoch)
            mean_loss = losses[logged : i + 1].mean().item()
            if loop.run is not None:
                loop.run.step_loss(mean_loss, first + i + 1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * hits[: i + 1].sum().item() / sum(sizes):.2f}%")
            logged = i + 1
        bar.update(1)
    steps = len(sizes)
    check_finite(loop, losses[:steps], first, epoch)
    loss_sum = (losses[:steps].double() * torch.tensor(sizes, device=device, dtype=torch.float64)).sum()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    seen = torch.tensor(sum(sizes), device=device, dtype=torch.float64)
    totals = distributed.all_sum(d, torch.stack([loss_sum, hits[:steps].sum().double(), seen]))
    return EpochResult(float(totals[0] / totals[2]), float(totals[1] / totals[2]), seconds, int(totals[2]))


def check_finite(loop: Loop, losses: torch.Tensor, first: int, epoch: int) -> None:
    """Stop on a NaN or infinite loss, naming the step and the learning rate; last.pth stays as it was.
    `losses` are this epoch's steps so far; `first` is the global step before the first of them."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        k = int(bad[0])
        kind = "NaN" if torch.isnan(losses[k]).item() else "infinite"
        lr = loop.optimizer.param_groups[0]["lr"]
        kept = f"{loop.run_dir / rundir.LAST} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was finished"
        raise VizkitError(
            f"the loss became {kind} at step {first + k + 1} (epoch {epoch}, lr {lr:.3g}); training stopped and "
            f"{kept}. Lower --lr (or check the data) and train again"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    d: Dist = distributed.SINGLE,
    layout: torch.memory_format = torch.contiguous_format,
    output: str = "logits",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) over a whole split, in eval mode; with several processes,
    each takes a share and the sums are added, so the result equals a single-process evaluation."""
    sums = torch.zeros(2, device=split.labels.device, dtype=torch.float64)  # loss, correct
    with modes_kept(model):
        for x, y in batches(split, batch_size, *norm, memory_format=layout, shard=(d.rank, d.world)):
            logits = first_tensor(model(x), model)
            sums[0] += graph.loss(logits, y, output, reduction="sum")
            sums[1] += (logits.argmax(1) == y).sum()
    distributed.all_sum(d, sums)
    return float(sums[0]) / len(split), float(sums[1]) / len(split)


def resume_state(loop: Loop) -> dict[str, Any]:
    """The training state last.pth keeps (beside the weights, history and best epoch that Run adds) so that
    --resume continues exactly where the run stopped. The one place that writes it; restore() reads it."""
    return {
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": loop.generator.get_state(),
    }


def restore(loop: Loop, ckpt: dict[str, Any]) -> int:
    """Put last.pth's weights and training state back; returns the epoch to continue from."""
    state = ckpt["resume"]
    load_weights(loop.model, ckpt["state_dict"], loop.run_dir / rundir.LAST, display_name(loop.cfg.model))
    loop.optimizer.load_state_dict(state["optimizer"])
    if loop.scheduler is not None:
        loop.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    loop.generator.set_state(state["generator"])
    return ckpt["epoch"] + 1


def train_epochs(loop: Loop, train: Split, val: Split, start_epoch: int) -> None:
    """Epochs start_epoch..cfg.epochs: each trained, validated and (on rank 0) reported to the Run."""
    cfg, d = loop.cfg, loop.dist
    for epoch in range(start_epoch, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        lr = loop.optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch}/{cfg.epochs}"
        with tqdm(
            total=loop.steps_per_epoch, desc=desc, unit="batch", leave=False, disable=None if d.main else True
        ) as bar:
            result = train_one_epoch(loop, train, epoch, bar)
        if loop.scheduler is not None and not loop.per_batch:
            loop.scheduler.step()
        val_loss, val_acc = evaluate(loop.model, val, cfg.eval_batch_size, loop.norm, d, loop.layout, loop.output)
        if loop.run is None:
            continue
        loop.run.epoch(
            epoch, train_loss=result.loss, train_accuracy=result.accuracy, val_loss=val_loss,
            val_accuracy=val_acc, lr=lr, seconds=result.seconds, images_per_second=result.images / result.seconds,
            started=epoch_start, resume=resume_state(loop),
        )  # fmt: skip
        print(
            f"{desc}: train loss {result.loss:.4f} acc {100 * result.accuracy:.2f}% | "
            f"val loss {val_loss:.4f} acc {100 * val_acc:.2f}% | "
            f"{result.seconds:.1f} s, {result.images / result.seconds:.0f} img/s",
            flush=True,
        )


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
    """Train, evaluate and export into run_dir (made or reopened by the caller, which holds its lock, with
    config.toml in it); returns the metrics written to metrics.json (None on ranks other than 0). `resume` is a
    last.pth checkpoint to continue from."""
    spec = data.spec
    mean = tuple(cfg.mean) or spec.mean
    std = tuple(cfg.std) or spec.std
    norm = (mean, std)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = get_model(cfg.model, spec.channels, spec.size, len(spec.classes), cfg.model_args)
    layout = memory_format(model, cfg.model)
    model = model.to(device, memory_format=layout)
    trainer = DistributedDataParallel(model) if d.enabled else model
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = num_batches(train, max(1, cfg.batch_size // d.world), d.world)
    scheduler, per_batch = make_scheduler(cfg, optimizer, steps_per_epoch)
    feature_batch = next(batches(val, FEATURE_BATCH, *norm))[0]
    stats_batch = next(batches(val, STATS_BATCH, *norm, memory_format=layout))[0]
    loop = Loop(
        cfg, norm, model, trainer, optimizer, scheduler, per_batch, generator, None, d, stop or StopFlag(),
        steps_per_epoch, run_dir, layout, output_kind(model, cfg.model, spec),
    )  # fmt: skip
    start_epoch = restore(loop, resume) if resume is not None else 1
    if d.main:
        loop.run = Run(
            model, feature_batch, mean, std, run_dir=run_dir, classes=spec.classes, dataset=spec.name,
            config=cfg.to_dict(), model_spec=cfg.model, model_args=cfg.model_args, log=cfg.log, epochs=cfg.epochs,
            log_every=cfg.log_every, stats_sample=stats_batch, existing=True,
            resume=resume["resume"] if resume is not None else None,
            data_dir=None if is_folder_dataset(cfg.dataset) else cfg.data_dir, keep_epochs=cfg.keep_epochs,
        )  # fmt: skip
    with loop.run if loop.run is not None else contextlib.nullcontext():
        if loop.run is not None and resume is None:
            print(loop.run.summary)
            loop.run.samples(train.images[:20].cpu(), train.labels[:20].cpu())
        with freed_memory_kept():  # the first epoch as fast as the others (allocator.py)
            train_epochs(loop, train, val, start_epoch)
        if loop.run is None:
            return None
        # The final numbers come from the best epoch's weights (by validation accuracy), on rank 0 alone,
        # in one pass over the whole test set that also gives everything the analysis needs.
        loop.run.checkpoints.load_best(loop.model)
        loop.run.evaluate(batches(test, cfg.eval_batch_size, *norm, memory_format=layout))
        loop.run.notes["processes"] = d.world  # for metrics.json
        # A signal during the test pass or the export: exit 130 before metrics.json marks the run finished;
        # every file written so far is whole, and --resume runs this final part again.
        return loop.run.finish(before_marking=loop.stop.raise_if_set)
