"""Run: what a training loop reports to, and when each thing is written. The public API a hand-written loop calls.

Four lines in tutorial 001's loop (experiments/own_loop.py) give it what `python -m vizkit.train` gets:

    from vizkit import Run
    with Run(net, next(iter(test_loader))[0], mean=(0.1307,), std=(0.3081,)) as run:
        for epoch in range(10):
            train(epoch); test()
            run.epoch(val_loader=test_loader)        # or run.epoch(train_loss=..., val_accuracy=...)
        run.evaluate(test_loader)

vizkit's own runner (engine.py) is one more client. Run decides what happens when; the numbers come from
analysis.py and graph.py, the pictures from plots.py and tiles.py, the files go where rundir.py says, and the
event logs through writer.py. The model is left as it was found (weights, modes, no hooks).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from vizkit import analysis, rundir
from vizkit.analysis import activation_stats, epoch_score, is_best, model_device
from vizkit.checkpoint import model_fields, read_checkpoint, save_checkpoint
from vizkit.config import LOG_LEVELS, TrainConfig, dict_to_toml
from vizkit.data import DATASETS, guess_dataset, loader_source
from vizkit.errors import VizkitError, first_line
from vizkit.export import check_onnx, export_onnx
from vizkit.files import atomic_write, atomic_write_bytes, atomic_write_text
from vizkit.graph import Graph, first_tensor, forward_graph, step_outputs
from vizkit.hooks import modes_kept
from vizkit.models import absolute_spec, display_name, spec_of
from vizkit.normalize import to_pixels
from vizkit.plots import confusion_figure, curves_figure, samples_figure, top_losses_figure
from vizkit.tiles import examples_image, layer_image, square
from vizkit.units import examples_of, format_map, model_map, receptive_fields
from vizkit.writer import NullWriter, Writer

log = logging.getLogger(__name__)

FEATURE_IMAGES = 4  # images of the sample that trace the graph
EXAMPLES = 16  # images a Run not told its dataset keeps for the inspection commands
EXAMPLES_PER_CHANNEL = 8  # dataset examples, strongest and weakest, of each channel of each conv step
ONNX_TOLERANCE = 1e-4
TENSORBOARD_IMAGES_PER_TAG = 10  # TensorBoard shows 10 images per tag unless --samples_per_plugin says more
RESULTS = ("test_accuracy", "test_loss", "best_val_accuracy")  # HParams' metrics, in every run alike


def image_epochs(epochs: int, limit: int = TENSORBOARD_IMAGES_PER_TAG) -> set[int]:
    """At most `limit` epochs, evenly spread and always the first and last, on which images are logged."""
    if epochs <= limit:
        return set(range(1, epochs + 1))
    return {round(1 + i * (epochs - 1) / (limit - 1)) for i in range(limit)}


def hparam_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The HParams columns of every run: vizkit.train's settings, the model and its normalisation, and a
    hand-written loop's own config keys, each as a value of its type."""
    columns = {**dataclasses.asdict(TrainConfig()), "model": "", "mean": "", "std": "", **config}
    return {k: _plain(v) for k, v in columns.items() if k not in ("data_dir", "run_dir")}  # where it ran: no column


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _pickled(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_png(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))  # a full disk raises, for the caller to say


def write_png(path: Path, picture: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="png"))


@dataclasses.dataclass
class Record:
    """What a run's checkpoints record beside the weights (`fields`: the code, classes, normalisation, data),
    and the normalisation, dataset and classes on their own."""

    mean: list[float]
    std: list[float]
    dataset: str | None
    classes: list[str]
    fields: dict[str, Any]
    classes_given: bool

    @classmethod
    def of(
        cls, model: nn.Module, sample: torch.Tensor, spec: str, config: dict[str, Any], mean: Sequence[float],
        std: Sequence[float], classes: Sequence[str] | None, dataset: str | None, data_dir: str | Path | None,
        model_args: dict[str, Any] | None,
    ) -> Record:  # fmt: skip
        channels = sample.shape[1]
        mean = [float(v) for v in mean] or [0.0] * channels
        std = [float(v) for v in std] or [1.0] * channels
        if len(mean) != channels or len(std) != channels:
            raise VizkitError(f"mean and std need {channels} value(s) each, one per input channel")
        with torch.no_grad(), modes_kept(model):
            outputs = first_tensor(model(sample[:2]), model).shape[-1]
        # where the data came from, for the record; a loop's own data is taken for a known dataset of its shape
        known = dataset or guess_dataset(list(sample.shape[1:]), outputs)
        names = list(classes or (DATASETS[known].classes if known in DATASETS else [str(i) for i in range(outputs)]))
        fields = {
            **model_fields(spec, model_args),
            "config": config,
            "classes": names,
            "mean": mean,
            "std": std,
            "input_shape": list(sample.shape[1:]),
            "dataset": known,
            "data_source": dataset or "your own training loop",
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        }
        if dataset is None:  # its test set may not be found later (or be another): the inspection commands use these
            fields["examples"] = to_pixels(sample[:EXAMPLES], mean, std)
        return cls(mean, std, known, names, fields, classes is not None)

    def note_loader(self, loader: object) -> None:
        """Where a loader's torchvision dataset keeps its files and which dataset it is: recorded (before the
        first checkpoint, when epoch() is given the loader), so the inspection commands find its test set."""
        root, name = loader_source(loader)
        if self.fields["data_dir"] is not None or root is None:
            return
        self.fields["data_dir"] = str(root)
        if name is not None and DATASETS[name].channels == self.fields["input_shape"][0]:
            self.dataset = self.fields["dataset"] = name
            if not self.classes_given:
                self.classes = self.fields["classes"] = list(DATASETS[name].classes)


def hparams_of(config: dict[str, Any], spec: str, mean: list[float], std: list[float]) -> dict[str, Any]:
    """A run's HParams values: its settings (but where it ran), the model and the normalisation."""
    values = {k: v for k, v in config.items() if k not in ("data_dir", "run_dir")}
    values.update(model=spec, mean=str(mean), std=str(std))
    return {k: _plain(v) for k, v in values.items() if v is not None}


def export_checked(
    model: nn.Module, mean: list[float], std: list[float], sample: torch.Tensor, path: Path, output: str
) -> float | None:
    """model.onnx from a CPU copy in eval mode (the model being trained stays where and as it is), and its largest
    difference from torch on `sample` (pixels); None where the exporter does not take the model."""
    model = copy.deepcopy(model).cpu().eval()
    try:
        export_onnx(model, mean, std, list(sample.shape[1:]), path, output)
        diff = check_onnx(path, model, mean, std, sample)
    except OSError:
        raise  # the disk, not the exporter: the caller says so
    except Exception as exc:  # the exporter does not take every model; the rest of the run still counts
        log.warning("model.onnx could not be exported: %s", first_line(exc))
        return None
    if diff > ONNX_TOLERANCE:
        log.warning("model.onnx differs from the torch model by %.2g (more than %g)", diff, ONNX_TOLERANCE)
    return diff


def evaluation_figures(result: analysis.Evaluation, pixels: torch.Tensor, classes: list[str]) -> dict[str, Figure]:
    """The confusion matrix and the top losses (`pixels`: the test images as uint8)."""
    pred, worst = result.predictions, result.worst
    return {
        "confusion_matrix": confusion_figure(result.confusion, classes),
        "top_losses": top_losses_figure(
            pixels[worst], pred.labels[worst], pred.preds[worst], pred.probs[worst].amax(1), classes
        ),
    }


def feature_images(model: nn.Module, graph: Graph, names: list[str], sample: torch.Tensor) -> dict[str, Any]:
    """Each step's maps for one input as a picture (tiles.layer_image), titled with what the step is."""
    kinds = {s.name: s.op for s in graph.steps}
    maps = step_outputs(model, names, sample[:1])
    return {n: layer_image(a[0], f"{n} ({kinds.get(n, '')}): {_shape(a)}") for n, a in maps.items()}


@dataclasses.dataclass
class Checkpoints:
    """best.pth (by validation accuracy, else loss) and last.pth, with the state --resume continues from."""

    dir: Path
    best_epoch: int = 0
    best_score: float = -math.inf
    keep_epochs: bool = True  # each epoch's weights too, in epochs/ (`features --epoch N`)

    @classmethod
    def resumed(cls, run_dir: Path, state: dict[str, Any], keep_epochs: bool) -> Checkpoints:
        """Going on from last.pth's resume state (or from nothing: {}). A kill between last.pth and best.pth
        leaves best.pth an epoch behind the best that last.pth names: it is written again, from last.pth."""
        best_epoch = state.get("best_epoch", 0)
        history = state.get("history") or [{}]
        if best_epoch and best_epoch == history[-1].get("epoch") and (run_dir / rundir.BEST).is_file():
            if read_checkpoint(run_dir / rundir.BEST)["epoch"] != best_epoch:
                last = read_checkpoint(run_dir / rundir.LAST)
                atomic_write_bytes(run_dir / rundir.BEST, _pickled({k: v for k, v in last.items() if k != "resume"}))
        return cls(run_dir, best_epoch, state.get("best_val_accuracy", -math.inf), keep_epochs)

    def save(self, model: nn.Module, fields: dict[str, Any], history: list[dict], resume: dict | None) -> None:
        """best.pth if this epoch is the best and, last, last.pth: once it names an epoch, that epoch is whole."""
        row = history[-1]
        fields["val_accuracy"] = row.get("val_accuracy")
        score = epoch_score(row.get("val_accuracy"), row.get("val_loss"))
        best = is_best(score, self.best_score)
        if best:
            self.best_epoch, self.best_score = fields["epoch"], score
        if self.keep_epochs:
            path = rundir.epoch_file(self.dir, fields["epoch"])
            path.parent.mkdir(exist_ok=True)
            save_checkpoint(path, model, **fields)
        state = None
        if resume is not None:  # what --resume continues from; `logs`: how much of each event log is this epoch's
            state = {**resume, "history": history, "best_val_accuracy": self.best_score,
                     "best_epoch": self.best_epoch, "logs": rundir.log_sizes(self.dir)}  # fmt: skip
        # last.pth first: it names the best epoch, and resumed() rewrites a best.pth a kill left behind
        save_checkpoint(self.dir / rundir.LAST, model, **fields, **({"resume": state} if state else {}))
        if best:
            save_checkpoint(self.dir / rundir.BEST, model, **fields)

    def load_best(self, model: nn.Module) -> None:
        """Put best.pth's weights into the model (the runner evaluates the best epoch, not the last)."""
        best = torch.load(self.dir / rundir.BEST, map_location=model_device(model), weights_only=True)
        model.load_state_dict(best["state_dict"])


class StepLosses:
    """Run.step's bookkeeping: a point for the `Loss/step` chart every `log_every` steps, and the epoch's mean."""

    def __init__(self, log_every: int) -> None:
        self.log_every, self.steps, self.interval, self.epoch = log_every, 0, [], []

    def add(self, loss: torch.Tensor | float) -> tuple[float, int] | None:
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        self.steps += 1
        self.interval.append(value)  # tensors, summed when a point is due: no device sync per step
        self.epoch.append(value)
        if self.steps % self.log_every:
            return None
        point, self.interval = torch.stack(self.interval).mean().item(), []
        return point, self.steps

    def end_epoch(self) -> float | None:
        mean = torch.stack(self.epoch).mean().item() if self.epoch else None
        self.epoch = []
        return mean


def projector_inputs(
    pred: analysis.Predictions, pixels: torch.Tensor, embed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The projector's points (the last Linear's inputs) and sprite (the images, squared) for the first `embed`."""
    if pred.features is None:
        return None
    n = min(embed, len(pred.labels))
    return pred.features[:n], square(pixels[:n].float() / 255)


def log_examples(
    writer: Writer | NullWriter, model: nn.Module, steps: list[str], rec: Record, pixels: torch.Tensor, run_dir: Path,
    step: int,
) -> None:  # fmt: skip
    """Each conv step's dataset examples over the test images (uint8 `pixels`): into the run (examples/) and
    the Images tab."""
    if not steps:
        return
    shape = list(pixels.shape[1:])
    fields = receptive_fields(model, forward_graph(model, shape), shape)
    found = examples_of(model, steps, pixels, rec.mean, rec.std, EXAMPLES_PER_CHANNEL)  # one pass for them all
    for name, ex in found.items():
        boxes = [[fields[name].box(int(r), int(c)) for r, c in ex.where[ch]] for ch in range(len(ex.top))]
        title = f"{name}: each channel's strongest and weakest of {len(pixels)} test images, by its maximum"
        picture = examples_image(pixels, ex.top, ex.bottom, boxes, None, title)
        write_png(rundir.examples_file(run_dir, name), picture)
        atomic_write_text(rundir.examples_file(run_dir, name, ".json"), json.dumps(ex.as_json()) + "\n")
        writer.image(f"top_images/{name}", picture, step)  # after features/: TensorBoard opens the first two groups


def say_what_is_missing(name: str, graph: Graph) -> None:
    what = f"model '{name}'"
    if not graph.maps("conv", "add"):
        log.warning("%s has no conv step: no feature maps are logged (Grad-CAM needs one too)", what)
    if not graph.relus():
        log.warning("%s has no ReLU step: no activation statistics", what)
    if not graph.names("linear"):
        log.warning("%s has no Linear step: the projector is not logged", what)


def metrics_record(
    header: dict[str, Any], test: dict[str, Any], best: dict[str, Any], notes: dict[str, Any],
    history: list[dict[str, Any]], onnx_diff: float | None,
) -> dict[str, Any]:  # fmt: skip
    """metrics.json: what the run is, its test numbers, the best epoch, the notes, the ONNX check, the history."""
    headline = {k: v for k, v in test.items() if k in ("test_accuracy", "test_loss")}
    chosen = {"best_epoch": best["best_epoch"]}
    if math.isfinite(best["best_val_accuracy"]) and any("val_accuracy" in h for h in history):
        chosen["best_val_accuracy"] = best["best_val_accuracy"]
    return {
        **header, **headline, **chosen, "train_seconds": sum(h["seconds"] for h in history), **notes,
        **{k: v for k, v in test.items() if k not in headline}, "onnx_max_abs_diff": onnx_diff, "history": history,
    }  # fmt: skip


def begin(run: Run) -> None:
    """A new run's first records: what its model lacks, a copy of its code, the summary, config and graph."""
    say_what_is_missing(display_name(run.spec) or type(run.model).__name__, run.graph)
    if run.rec.fields["model_source"]:  # a copy of the user's code, for the record (never imported from here)
        rundir.copy_source(run.dir, Path(run.rec.fields["model_source"]["path"]))
    shown = {**run.config, "mean": run.rec.mean, "std": run.rec.std}  # the normalisation used, not `[]`
    run.writer.text("model/summary", "```\n" + run.summary + "\n```")
    run.writer.text("config", "```\n" + dict_to_toml(shown) + "```")
    if run.full:
        run.traced = run.writer.graph(run.model, run.sample[:FEATURE_IMAGES])  # else the ONNX graph


class Run:
    """A run directory that a training loop reports to: event logs, checkpoints, ONNX, metrics and curves.

    `model` is the model being trained (a DataParallel/DDP wrapper is unwrapped). `sample` is a batch of
    inputs as the model takes them (normalised): its first images' feature maps are logged each epoch, and it
    traces the graph. `mean`/`std` are the normalisation the inputs went through (default: none, pixels in
    [0, 1]); they go into the checkpoint and into model.onnx, which takes pixels. Use it as a context manager
    (see __exit__)."""

    def __init__(
        self, model: nn.Module, sample: torch.Tensor, mean: Sequence[float] = (), std: Sequence[float] = (), *,
        run_dir: str | Path | None = None, classes: Sequence[str] | None = None, dataset: str | None = None,
        config: dict[str, Any] | None = None, model_spec: str | None = None, model_args: dict[str, Any] | None = None,
        log: str = "full", epochs: int | None = None, log_every: int = 50, stats_sample: torch.Tensor | None = None,
        existing: bool = False, resume: dict[str, Any] | None = None, data_dir: str | Path | None = None,
        keep_epochs: bool = True,
    ) -> None:  # fmt: skip
        """`model_spec` names the model's code (a zoo name, `PATH.py:NAME` or `module:NAME`; default: its class,
        with `model_args` the keyword arguments it was built with). `epochs`, if known, spreads the feature-map
        images over at most 10 epochs. `stats_sample` (default: `sample`) is what activation statistics are
        measured on. `existing` takes `run_dir` as the caller made or reopened it (rundir.py; the runner writes
        config.toml first), and `resume` is last.pth's resume state to continue from (history and best epoch).
        `data_dir`: where the dataset's files are (default: the `root` of the loaders' torchvision dataset, when
        epoch() or evaluate() is given one), so the inspection commands find its test set from any folder.
        Not told its `dataset`, the run keeps 16 images of `sample` for them; `keep_epochs`: each epoch's weights."""
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        if log not in LOG_LEVELS:
            raise VizkitError(f"log must be full, scalars or off, not '{log}'")
        self.model, self.full = model, log == "full"
        device = model_device(model)
        self.sample = sample.detach().to(device)
        self.stats_sample = (stats_sample if stats_sample is not None else sample).detach().to(device)
        self.input_shape = list(sample.shape[1:])
        self.spec = absolute_spec(model_spec) if model_spec is not None else spec_of(model)
        self.config = dict(config or {})
        self.rec = Record.of(
            model, self.sample, self.spec, self.config, mean, std, classes, dataset, data_dir, model_args
        )
        self.graph = forward_graph(model, self.input_shape)
        self.convs = self.graph.maps("conv", "add")  # feature maps: what each conv step and residual addition gives
        self.relus, self.projector_layer = self.graph.relus(), (self.graph.names("linear") or [None])[-1]
        self.existing = existing or resume is not None
        name = display_name(self.spec) if self.spec else type(model).__name__
        self.dir = rundir.hold(Path(run_dir)) if self.existing else rundir.create(run_dir, name)
        self.writer = Writer(self.dir) if log != "off" else NullWriter()
        self.image_epochs = image_epochs(epochs) if epochs else None  # None: epochs unknown, every epoch
        self.history: list[dict[str, Any]] = list((resume or {}).get("history", []))
        self.checkpoints = Checkpoints.resumed(self.dir, resume or {}, keep_epochs)
        self.test, self.notes = {}, {}  # the final evaluation's numbers; extra entries for metrics.json
        self.losses = StepLosses(log_every)
        self.summary = format_map(model_map(model, self.input_shape))
        self.traced, self.finished = True, None
        self._mark = time.perf_counter()  # an epoch's seconds, when the loop gives none: since the last epoch()
        if resume is None:
            try:
                begin(self)
            except BaseException:  # the lock and the logs go, and a run this made
                self.__exit__(*sys.exc_info())
                raise

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Finish a run whose loop ended; after an exception only close the logs, and remove a run that finished
        no epoch (nothing in it to keep, or to resume)."""
        try:
            if exc_type is None and self.finished is None:
                self.finish()
        finally:
            try:
                self.writer.close()
            finally:
                rundir.release(self.dir)
                if exc_type is not None and not self.history and not self.existing:
                    rundir.discard(self.dir)
                    log.warning("no epoch finished: %s removed", self.dir)

    def step(self, loss: torch.Tensor | float) -> None:
        """Optional, once per training batch: the loss curve per step, and the epoch's train loss."""
        point = self.losses.add(loss)
        if point is not None:
            self.step_loss(*point)

    def step_loss(self, value: float, step: int) -> None:
        """The training loss at a training step (a mean over the last steps): the `Loss/step` chart."""
        self.writer.step_loss(value, step)

    def epoch(
        self, epoch: int | None = None, *, train_loss: float | None = None, train_accuracy: float | None = None,
        val_loss: float | None = None, val_accuracy: float | None = None, lr: float | None = None,
        seconds: float | None = None, images_per_second: float | None = None,
        val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, started: float | None = None,
        resume: dict[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Once per epoch, after training it: log the numbers given, feature maps, histograms and activation
        statistics, and save best.pth (by validation accuracy, else loss) and last.pth. Returns the history row.

        `val_loader` (batches of (x, y)) measures val_loss and val_accuracy here, in eval mode. Accuracies are
        fractions. `started` (a time.perf_counter() value) adds `wall_seconds`; `resume` is training state
        that last.pth keeps for --resume.
        """
        epoch = int(epoch) if epoch is not None else len(self.history) + 1
        given = dict(train_loss=train_loss, train_accuracy=train_accuracy, val_loss=val_loss, val_accuracy=val_accuracy,
                     lr=lr, seconds=seconds, images_per_second=images_per_second)  # fmt: skip
        row = {"epoch": epoch, **self._numbers(given, val_loader)}
        self._log_epoch(row)
        if started is not None:  # training + validation + logging: what an epoch costs the person waiting
            row["wall_seconds"] = time.perf_counter() - started
        self.history.append(row)
        self.writer.flush()  # everything logged for this epoch is on disk before a checkpoint names it
        self.checkpoints.save(self.model, {**self.rec.fields, "epoch": epoch}, self.history, resume)
        self._mark = time.perf_counter()
        return row

    def _numbers(self, numbers: dict[str, Any], val_loader: Iterable | None) -> dict[str, float]:
        # numbers may come as 0-d tensors (loss.item() forgotten): plain floats from here on
        row = {k: float(v) for k, v in numbers.items() if v is not None}
        row.setdefault("seconds", time.perf_counter() - self._mark)  # the loop's own time for this epoch
        self.rec.note_loader(val_loader)
        if val_loader is not None and ("val_loss" not in row or "val_accuracy" not in row):
            pred = analysis.predict(self.model, val_loader, self.input_shape)
            row.setdefault("val_loss", pred.loss)
            row.setdefault("val_accuracy", pred.accuracy)
        epoch_loss = self.losses.end_epoch()
        if "train_loss" not in row and epoch_loss is not None:
            row["train_loss"] = epoch_loss
        return row

    def _log_epoch(self, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        self.writer.epoch(row, epoch)
        if not self.full:
            return
        if self.convs and (self.image_epochs is None or epoch in self.image_epochs):
            self.writer.feature_maps(feature_images(self.model, self.graph, self.convs, self.sample), epoch)
        self.writer.histograms(analysis.parameter_histograms(self.model), epoch)
        if self.relus:
            self.writer.activations(activation_stats(self.model, self.stats_sample), epoch)

    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], embed: int = 1000) -> dict[str, Any]:
        """The final evaluation of the model as it is, on (x, y) test batches: loss, accuracy, confusion matrix,
        per-class accuracy and top losses (PNG and TensorBoard), PR curves and the projector (the input of the
        last Linear for the first `embed` images). Returns those numbers; metrics.json gets them on exit."""
        self.rec.note_loader(loader)
        result = analysis.evaluate(self.model, loader, self.input_shape, len(self.rec.classes), self.projector_layer)
        pixels = to_pixels(result.predictions.inputs, self.rec.mean, self.rec.std)  # the images, before normalising
        figures = evaluation_figures(result, pixels, self.rec.classes)
        for name, fig in figures.items():  # files for the report, images for TensorBoard
            save_png(fig, rundir.figure_file(self.dir, name))
        embedding = projector_inputs(result.predictions, pixels, embed)
        step = self.history[-1]["epoch"] if self.history else 0
        self.writer.evaluation(result, self.rec.classes, figures if self.full else {}, step, embedding)
        if self.full:
            log_examples(self.writer, self.model, self.graph.maps("conv"), self.rec, pixels, self.dir, step)
        self.test = result.numbers()
        return dict(self.test)

    def finish(self, before_marking: Callable[[], None] | None = None) -> dict[str, Any]:
        """model.onnx (checked against torch), hparams, curves.png and, last, metrics.json: the run is finished.

        `before_marking` is called just before metrics.json is written (the runner raises there on Ctrl-C)."""
        header = {"dataset": self.rec.dataset, "model": self.spec, "model_source": self.rec.fields["model_source"]}
        best = {"best_epoch": self.checkpoints.best_epoch, "best_val_accuracy": self.checkpoints.best_score}
        metrics = metrics_record(header, self.test, best, self.notes, self.history, self._export_onnx())
        results = {k: metrics.get(k) for k in RESULTS}
        if any(v is not None for v in results.values()):
            hparams = hparams_of(self.config, self.spec, self.rec.mean, self.rec.std)
            self.writer.hparams(hparams, results, hparam_columns(self.config))
        if self.history:
            save_png(curves_figure(self.history), self.dir / rundir.CURVES)
        self.writer.flush()  # all of the run on disk before metrics.json says it is finished
        if before_marking is not None:
            before_marking()
        rundir.write_metrics(self.dir, metrics)
        self.finished = metrics
        return metrics

    def _export_onnx(self) -> float | None:
        if not self.history:
            return None
        pixels = to_pixels(self.stats_sample[:64], self.rec.mean, self.rec.std).float() / 255
        path = self.dir / rundir.ONNX
        diff = export_checked(self.model, self.rec.mean, self.rec.std, pixels, path, self.graph.output_kind)
        if diff is not None and self.full and not self.traced:
            self.writer.onnx_graph(path)
        return diff

    def samples(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A grid of training images (uint8, N x C x H x W) with their labels, as recipe 003 shows them."""
        if self.full:
            self.writer.figure("samples/train", samples_figure(images.cpu(), labels.cpu(), self.rec.classes), 0)


def _shape(activation: torch.Tensor) -> str:
    _, c, h, w = activation.shape
    return f"{c} channels, {h}x{w}"
