"""Run: a run directory and everything written into it. The public API a hand-written training loop calls.

Four lines in tutorial 001's loop (experiments/own_loop.py) give it what `python -m vizkit.train` gets:

    from vizkit import Run
    with Run(net, next(iter(test_loader))[0], mean=(0.1307,), std=(0.3081,)) as run:
        for epoch in range(10):
            train(epoch); test()
            run.epoch(val_loader=test_loader)        # or run.epoch(train_loss=..., val_accuracy=...)
        run.evaluate(test_loader)

vizkit's own runner (engine.py) is one more client. Run decides what is written and where; the numbers it
draws come from analysis.py and hooks.py, and the model is left as it was found (weights, modes, no hooks).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vizkit.analysis import (
    activation_stats,
    confusion_matrix,
    format_summary,
    model_device,
    model_summary,
    parameter_histograms,
    per_class_accuracy,
    predict,
    top_losses,
)
from vizkit.checkpoint import SOURCE_DIR, model_fields, save_checkpoint
from vizkit.config import dict_to_toml
from vizkit.data import DATASETS
from vizkit.errors import VizkitError, first_line
from vizkit.export import check_onnx, export_onnx
from vizkit.files import atomic_write_text, remove_stale_temporaries
from vizkit.graph import first_tensor, forward_graph, step_outputs
from vizkit.hooks import modes_kept
from vizkit.logger import RunLogger
from vizkit.models import absolute_spec, display_name
from vizkit.plots import confusion_figure, curves_figure, save_figure, top_losses_figure

log = logging.getLogger(__name__)

FEATURE_IMAGES = 4  # images of the sample that trace the graph
TORCHVISION_NAMES = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "CIFAR10": "cifar10"}  # class -> dataset
ONNX_TOLERANCE = 1e-4
SPLIT_TAGS = {  # history key -> (sub-run, TensorBoard tag): train and val curves on one chart (logger.py)
    "train_loss": ("train", "Loss"),
    "val_loss": ("val", "Loss"),
    "train_accuracy": ("train", "Accuracy"),
    "val_accuracy": ("val", "Accuracy"),
}
TAGS = {  # history key -> TensorBoard tag in the run's own event log
    "lr": "lr",
    "images_per_second": "speed/images_per_second",
    "seconds": "speed/epoch_seconds",
}


def new_run_dir(run_dir: str | Path | None, name: str, root: str | Path = "runs") -> Path:
    """runs/<date>-<time>-<name> (never an existing one, even for two runs started in the same second), or
    the directory given, which must be new or empty."""
    if run_dir:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise VizkitError(f"run directory {path} already exists and is not empty; choose a new run directory")
        candidates = [path]
    else:
        base = Path(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
        candidates = [base] + [base.with_name(f"{base.name}-{n}") for n in range(2, 1000)]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir(exist_ok=bool(run_dir))  # mkdir is the check: whoever creates it first owns it
            except FileExistsError:
                continue
        except OSError as exc:
            raise VizkitError(f"cannot write the run directory {path}: {exc.strerror or exc}; choose another") from None
        if not os.access(path, os.W_OK):
            raise VizkitError(f"cannot write the run directory {path}: permission denied; choose another")
        return path
    raise VizkitError(f"no free run directory name under {root}/ for {name}; give one")


def spec_of(model: nn.Module) -> str:
    """How to rebuild a model from its class: `/abs/file.py:Name` or `package.module:Name` ('' if it can't be)."""
    cls = type(model)
    if "." in cls.__qualname__ or cls.__module__.split(".")[0] in ("torch", "builtins"):
        return ""  # defined inside a function or class, or a bare nn.Sequential: no name to import it by
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__ == "__main__" or cls.__module__.startswith("vizkit_user_"):
        return f"{Path(path).resolve()}:{cls.__qualname__}" if path else ""
    return f"{cls.__module__}:{cls.__qualname__}"


def guess_dataset(input_shape: Sequence[int], classes: int) -> str | None:
    """The known dataset with this input shape and class count (where the inspection commands find test images)."""
    for name, spec in DATASETS.items():
        if [spec.channels, spec.size, spec.size] == list(input_shape) and len(spec.classes) == classes:
            return name  # MNIST before Fashion-MNIST: same shape, and the teaching case
    return None


class Run:
    """A run directory that a training loop reports to: event log, checkpoints, ONNX, metrics and curves.

    `model` is the model being trained (a DataParallel/DDP wrapper is unwrapped). `sample` is a batch of
    inputs as the model takes them (normalised): its first images' feature maps are logged each epoch, and it
    traces the graph. `mean`/`std` are the normalisation the inputs went through (default: none, pixels in
    [0, 1]); they go into the checkpoint and into model.onnx, which takes pixels.

    Use it as a context manager: on a normal exit it writes model.onnx, curves.png and, last, metrics.json;
    on an exception it only closes the event log, so a half-finished run is never marked finished.
    """

    def __init__(
        self,
        model: nn.Module,
        sample: torch.Tensor,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        *,
        run_dir: str | Path | None = None,
        classes: Sequence[str] | None = None,
        dataset: str | None = None,
        config: dict[str, Any] | None = None,
        model_spec: str | None = None,
        model_args: dict[str, Any] | None = None,
        log: str = "full",
        epochs: int | None = None,
        log_every: int = 50,
        stats_sample: torch.Tensor | None = None,
        resume_step: int | None = None,
        existing: bool = False,
        data_dir: str | Path | None = None,
    ) -> None:
        """`model_spec` names the model's code (a zoo name, `PATH.py:NAME` or `module:NAME`; default: its class,
        with `model_args` the keyword arguments it was built with). `epochs`, if known, spreads the feature-map
        images over at most 10 epochs. `stats_sample` (default: `sample`) is what activation statistics are
        measured on. `resume_step` reopens an existing `run_dir` for --resume: TensorBoard drops what was
        logged at or after that step. `existing` takes `run_dir` as it is (the runner made it, with its config).
        `data_dir`: where the dataset's files are (default: the `root` of the loaders' torchvision dataset, when
        epoch() or evaluate() is given one), so the inspection commands find its test set from any folder.
        Not told its `dataset`, the run also keeps the first 16 images of `sample` for them (checkpoint.py)."""
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        if log not in ("full", "scalars", "off"):
            raise VizkitError(f"log must be full, scalars or off, not '{log}'")
        self.model = model
        device = model_device(model)
        self.sample = sample.detach().to(device)
        self.stats_sample = (stats_sample if stats_sample is not None else sample).detach().to(device)
        self.input_shape = list(sample.shape[1:])
        channels = self.input_shape[0]
        self.mean = [float(v) for v in mean] or [0.0] * channels
        self.std = [float(v) for v in std] or [1.0] * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise VizkitError(f"mean and std need {channels} value(s) each, one per input channel")
        with torch.no_grad(), modes_kept(model):
            outputs = first_tensor(model(self.sample[:2]), model).shape[-1]
        # where the data came from, for the record; a loop's own data is taken for a known dataset of its shape
        self.data_source = dataset or "your own training loop"
        self.dataset = dataset or guess_dataset(self.input_shape, outputs)
        default_classes = (
            DATASETS[self.dataset].classes if self.dataset in DATASETS else [str(i) for i in range(outputs)]
        )
        self.classes = list(classes or default_classes)
        self.spec = absolute_spec(model_spec) if model_spec is not None else spec_of(model)
        self.config = dict(config or {})
        name = display_name(self.spec) if self.spec else type(model).__name__
        reuse = resume_step is not None or existing
        self.dir = Path(run_dir) if reuse and run_dir else new_run_dir(run_dir, name)
        if reuse:  # --resume after a SIGKILL: the half-written files of the killed process go
            for tmp in remove_stale_temporaries(self.dir):
                logging.getLogger(__name__).info("removed %s, left by a killed writer", tmp.name)  # (`log`: a level)
        self.fields = {
            **model_fields(self.spec, model_args),
            "config": self.config,
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
            "input_shape": self.input_shape,
            "dataset": self.dataset,
            "data_source": self.data_source,
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        }
        if dataset is None:  # its test set may not be found later (or be another): the inspection commands use these
            self.fields["examples"] = self._pixels(self.sample[:16])
        self._classes_given = classes is not None
        self.graph = forward_graph(model, self.input_shape)
        # feature maps: every conv step and residual addition (what the next layer receives)
        self.convs = self.graph.maps("conv", "add")
        self.relus = self.graph.relus()
        linears = self.graph.names("linear")  # the projector shows what the last Linear takes
        self.projector_layer = linears[-1] if linears else None
        self.logger = RunLogger(self.dir, log, epochs, purge_step=resume_step)
        self.log_every = log_every
        self.history: list[dict[str, Any]] = []
        self.best_epoch, self.best_score = 0, float("-inf")
        self.test: dict[str, Any] = {}
        self.notes: dict[str, Any] = {}
        self._steps, self._epoch_loss, self._epoch_steps, self._interval = 0, None, 0, []
        self.summary = format_summary(model_summary(model, self.input_shape))
        self.traced = True
        self._mark = time.perf_counter()  # an epoch's seconds, when the loop gives none: since the last epoch()
        self.finished: dict[str, Any] | None = None
        if resume_step is None:
            self._start()

    def _start(self) -> None:
        what = f"model '{display_name(self.spec) or type(self.model).__name__}'"
        if not self.convs:
            log.warning("%s has no conv step: no feature maps are logged (Grad-CAM needs one too)", what)
        if not self.relus:
            log.warning("%s has no ReLU step: no activation statistics", what)
        if not self.projector_layer:
            log.warning("%s has no Linear step: the projector is not logged", what)
        if self.fields["model_source"]:  # a copy of the user's code, for the record (never imported from here)
            source = Path(self.fields["model_source"]["path"])
            (self.dir / SOURCE_DIR).mkdir(exist_ok=True)
            shutil.copy2(source, self.dir / SOURCE_DIR / source.name)
        shown = {**self.config, "mean": self.mean, "std": self.std}  # the normalisation used, not `[]`
        self.logger.text("model/summary", "```\n" + self.summary + "\n```")
        self.logger.text("config", "```\n" + dict_to_toml(shown) + "```")
        self.traced = self.logger.graph(self.model, self.sample[:FEATURE_IMAGES])

    # --- the loop's calls ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None and self.finished is None:
                self.finish()
        finally:
            self.logger.close()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Any numbers, under their own tags, at a step of your choosing."""
        self.logger.scalars(values, step)

    def step(self, loss: torch.Tensor | float) -> None:
        """Optional, once per training batch: the loss curve per step, and the epoch's train loss."""
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        self._steps += 1
        self._epoch_steps += 1
        self._epoch_loss = value if self._epoch_loss is None else self._epoch_loss + value  # no sync per step
        self._interval.append(value)
        if self._steps % self.log_every == 0:
            self.step_loss(torch.stack(self._interval).mean().item(), self._steps)
            self._interval = []

    def step_loss(self, value: float, step: int) -> None:
        """The training loss at a training step (a mean over the last steps): the `Loss/step` chart."""
        self.logger.split_scalars("train", {"Loss/step": value}, step)

    def epoch(
        self,
        epoch: int | None = None,
        *,
        train_loss: float | None = None,
        train_accuracy: float | None = None,
        val_loss: float | None = None,
        val_accuracy: float | None = None,
        lr: float | None = None,
        seconds: float | None = None,
        images_per_second: float | None = None,
        val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        started: float | None = None,
        resume: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Once per epoch, after training it: log the numbers given, feature maps, histograms and activation
        statistics, and save best.pth (by validation accuracy, else loss) and last.pth. Returns the history row.

        `val_loader` (batches of (x, y)) measures val_loss and val_accuracy here, in eval mode. Accuracies are
        fractions. `started` (a time.perf_counter() value) adds `wall_seconds`; `resume` is training state
        that last.pth keeps for --resume.
        """
        epoch = int(epoch) if epoch is not None else len(self.history) + 1
        # numbers may come as 0-d tensors (loss.item() forgotten): plain floats from here on
        train_loss, train_accuracy, val_loss, val_accuracy, lr, images_per_second = (
            None if v is None else float(v)
            for v in (train_loss, train_accuracy, val_loss, val_accuracy, lr, images_per_second)
        )
        if seconds is None:  # the loop's own time for this epoch (its training and its test pass)
            seconds = time.perf_counter() - self._mark
        self._note_data_dir(val_loader)
        if val_loader is not None and (val_loss is None or val_accuracy is None):
            pred = predict(self.model, val_loader, self.input_shape)
            val_loss = pred.loss if val_loss is None else val_loss
            val_accuracy = pred.accuracy if val_accuracy is None else val_accuracy
        if train_loss is None and self._epoch_steps:
            train_loss = (self._epoch_loss / self._epoch_steps).item()
        self._epoch_loss, self._epoch_steps = None, 0
        given = {
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr,
            "seconds": seconds,
            "images_per_second": images_per_second,
        }
        row = {"epoch": epoch, **{k: float(v) for k, v in given.items() if v is not None}}
        self.logger.scalars({TAGS[k]: v for k, v in row.items() if k in TAGS}, epoch)
        for key, (split, tag) in SPLIT_TAGS.items():
            if key in row:
                self.logger.split_scalars(split, {tag: row[key]}, epoch)
        if self.convs and self.logger.wants_images(epoch):
            kinds = {s.name: s.op for s in self.graph.steps}
            self.logger.feature_maps(step_outputs(self.model, self.convs, self.sample[:1]), kinds, epoch)
        if self.logger.full:
            self.logger.histograms(parameter_histograms(self.model), epoch)
        if self.relus and self.logger.full:
            self.logger.activations(activation_stats(self.model, self.stats_sample), epoch)
        if started is not None:  # training + validation + logging: what an epoch costs the person waiting
            row["wall_seconds"] = time.perf_counter() - started
        self.history.append(row)
        score = val_accuracy if val_accuracy is not None else (-val_loss if val_loss is not None else None)
        fields = {**self.fields, "epoch": epoch, "val_accuracy": val_accuracy}
        if score is None or score > self.best_score:
            self.best_epoch, self.best_score = epoch, score if score is not None else float("-inf")
            save_checkpoint(self.dir / "best.pth", self.model, **fields)
        state = None
        if resume is not None:
            state = {**resume, "history": self.history, "best_val_accuracy": self.best_score,
                     "best_epoch": self.best_epoch}  # fmt: skip
        # last.pth last: once it names this epoch, everything of this epoch is on disk
        save_checkpoint(self.dir / "last.pth", self.model, **fields, **({"resume": state} if state else {}))
        self._mark = time.perf_counter()
        return row

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the history and best epoch that last.pth's `resume` state recorded (for --resume)."""
        self.history = list(state["history"])
        self.best_score, self.best_epoch = state["best_val_accuracy"], state["best_epoch"]

    def load_best(self) -> None:
        """Put best.pth's weights into the model (the runner evaluates the best epoch, not the last)."""
        best = torch.load(self.dir / "best.pth", map_location=model_device(self.model), weights_only=True)
        self.model.load_state_dict(best["state_dict"])

    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], embed: int = 1000) -> dict[str, Any]:
        """The final evaluation of the model as it is, on (x, y) test batches: loss, accuracy, confusion matrix,
        per-class accuracy and top losses (PNG and TensorBoard), PR curves and the projector (the input of the
        last Linear for the first `embed` images). Returns those numbers; metrics.json gets them on exit."""
        self._note_data_dir(loader)
        pred = predict(self.model, loader, self.input_shape, self.projector_layer, keep_inputs=True)
        images = self._pixels(pred.inputs)  # what the images were before normalisation
        pixels = images.float() / 255
        cm = confusion_matrix(pred.labels, pred.preds, len(self.classes))
        per_class = per_class_accuracy(cm)
        worst = top_losses(pred)
        images = images[worst]
        figures = {
            "confusion_matrix": confusion_figure(cm, self.classes),
            "top_losses": top_losses_figure(
                images, pred.labels[worst], pred.preds[worst], pred.probs[worst].amax(1), self.classes
            ),
        }
        for name, fig in figures.items():  # files for the report, images for TensorBoard
            save_figure(fig, self.dir / f"{name}.png")
        step = self.history[-1]["epoch"] if self.history else 0
        self.logger.evaluation(pred, per_class, figures, pixels, self.classes, step, embed)
        self.test = {
            "test_accuracy": pred.accuracy,
            "test_loss": pred.loss,
            "confusion_matrix": cm.tolist(),
            "per_class_accuracy": per_class,
        }
        return dict(self.test)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs back to uint8 pixels (N, C, H, W) on the CPU."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().byte()

    def _note_data_dir(self, loader: object) -> None:
        """A torchvision dataset's `root` (through DataLoader and Subset), where its files are, and which dataset
        its class is: recorded (before the first checkpoint, when epoch() is given the loader)."""
        dataset = getattr(loader, "dataset", None)
        while dataset is not None and not hasattr(dataset, "root"):
            dataset = getattr(dataset, "dataset", None)
        root = getattr(dataset, "root", None)
        if self.fields["data_dir"] is not None or not isinstance(root, (str, Path)) or not Path(root).is_dir():
            return
        self.fields["data_dir"] = str(Path(root).resolve())
        name = TORCHVISION_NAMES.get(type(dataset).__name__)
        if name is not None and DATASETS[name].channels == self.input_shape[0]:
            self.dataset = self.fields["dataset"] = name
            if not self._classes_given:
                self.classes = self.fields["classes"] = list(DATASETS[name].classes)

    def note(self, **values: Any) -> None:
        """Extra entries for metrics.json (the runner records its number of processes)."""
        self.notes.update(values)

    def finish(self, before_marking: Callable[[], None] | None = None) -> dict[str, Any]:
        """model.onnx (checked against torch), hparams, curves.png and, last, metrics.json: the run is finished.

        `before_marking` is called just before metrics.json is written (the runner raises there on Ctrl-C)."""
        onnx_diff = self._export_onnx()
        best = {"best_epoch": self.best_epoch}
        if self.best_score > float("-inf") and any("val_accuracy" in h for h in self.history):
            best["best_val_accuracy"] = self.best_score
        metrics = {
            "dataset": self.dataset,
            "model": self.spec,
            "model_source": self.fields["model_source"],
            **{k: v for k, v in self.test.items() if k in ("test_accuracy", "test_loss")},
            **best,
            "train_seconds": sum(h["seconds"] for h in self.history),
            **self.notes,
            **{k: v for k, v in self.test.items() if k not in ("test_accuracy", "test_loss")},
            "onnx_max_abs_diff": onnx_diff,
            "history": self.history,
        }
        hparams = {k: v for k, v in self.config.items() if k not in ("data_dir", "run_dir")}
        hparams.update(model=self.spec, mean=str(self.mean), std=str(self.std))
        results = {k: metrics[k] for k in ("test_accuracy", "test_loss", "best_val_accuracy") if k in metrics}
        if results:
            self.logger.hparams(hparams, results)
        if self.history:
            save_figure(curves_figure(self.history), self.dir / "curves.png")
        if before_marking is not None:
            before_marking()
        atomic_write_text(self.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: finished
        self.finished = metrics
        return metrics

    def _export_onnx(self) -> float | None:
        if not self.history:
            return None
        # A CPU copy in eval mode: the model being trained stays where and as it is.
        model = copy.deepcopy(self.model).cpu().eval()
        pixels = self._pixels(self.stats_sample[:64]).float() / 255
        try:
            output = self.graph.output_kind
            path = export_onnx(model, self.mean, self.std, self.input_shape, self.dir / "model.onnx", output)
            diff = check_onnx(path, model, self.mean, self.std, pixels)
        except Exception as exc:  # the exporter does not take every model; the rest of the run still counts
            log.warning("model.onnx could not be exported: %s", first_line(exc))
            return None
        if diff > ONNX_TOLERANCE:
            log.warning("model.onnx differs from the torch model by %.2g (more than %g)", diff, ONNX_TOLERANCE)
        if not self.traced:
            self.logger.onnx_graph(path)
        return diff

    def samples(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A grid of training images (uint8, N x C x H x W) with their labels, as recipe 003 shows them."""
        self.logger.samples(images, labels, self.classes)
