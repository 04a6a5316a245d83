"""What goes into a run's event logs, under which tag. It writes what it is handed; Run decides what and when.

What a person sees first decides the layout. TensorBoard opens on Time Series, which groups tags by their
first `/` part, sorts the groups (upper case before lower case) and expands only the first two. So the
per-epoch `Loss` and `Accuracy` are written, as Keras does, under the same tag in two sub-runs, `train/`
and `val/`: one chart each with both curves, and the first two groups. Then lr, speed/*, features/*,
weights/*, grads/*, activations/*, samples/*, eval/*, per_class_accuracy/*, pr/*, hparam/*, and the
embedding projector, in the run's own directory.

Every write happens here, in the caller's thread, and `flush()` returns once it is on disk: tensorboardX's
writer thread buffered for two minutes (a kill lost the epoch) and, when a write failed, died while training
waited on its queue for good. Here a full disk raises OSError at the write that failed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboardX import SummaryWriter
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.writer import FileWriter
from torch import nn

from vizkit.analysis import Evaluation, Histogram
from vizkit.errors import first_line
from vizkit.hooks import modes_kept
from vizkit.rundir import SPLITS

log = logging.getLogger(__name__)

FLUSH_SECONDS = 30  # a TensorBoard watching a long epoch sees its loss points at least this often
# HParams shows 5 columns at first, those whose values differ across runs first, then by name: these are
# marked as differing so they are the 5 shown, even for a single run
HPARAMS_SHOWN = ("model", "optimizer", "lr", "epochs", "batch_size")
EPOCH_TAGS = {  # a history row's key -> (sub-run, tag): train and val curves share a chart
    "train_loss": ("train", "Loss"),
    "val_loss": ("val", "Loss"),
    "train_accuracy": ("train", "Accuracy"),
    "val_accuracy": ("val", "Accuracy"),
    "lr": (None, "lr"),
    "images_per_second": (None, "speed/images_per_second"),
    "seconds": (None, "speed/epoch_seconds"),
}


class _Events:
    """tensorboardX's EventFileWriter without its thread."""

    def __init__(self, logdir: str) -> None:
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir
        # within one second, by the nanosecond the log began, then the pid: a new log never takes an old one's name
        self._events = EventsWriter(os.path.join(logdir, "events"), f".{time.time_ns()}.{os.getpid()}")
        self._failed = False

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: object) -> None:
        self._guard(self._events.write_event, event)

    def flush(self) -> None:
        self._guard(self._events.flush)

    def _guard(self, write, *args):  # noqa: ANN001, ANN202
        if self._failed:
            raise OSError(f"an earlier write to {self._logdir} failed")
        try:
            return write(*args)
        except OSError:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            self._events.close()
        except OSError:  # the write that failed was reported already; closing must not raise it again
            if not self._failed:
                raise

    def reopen(self) -> None:
        pass


class _FileWriter(FileWriter):
    def __init__(self, logdir: str) -> None:  # no super(): no thread, no atexit hook
        self.event_writer = _Events(logdir)
        self._default_metadata: dict = {}


class _SummaryWriter(SummaryWriter):
    """SummaryWriter's summaries (images, figures, histograms, PR curves, the projector) with _Events."""

    def _get_file_writer(self) -> FileWriter:
        if self.file_writer is None or self.all_writers is None:
            self.file_writer = _FileWriter(str(self.logdir))
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
        return self.file_writer

    def close(self) -> None:
        if self.all_writers is not None:
            writers, self.all_writers, self.file_writer = self.all_writers, None, None
            _close_all(writers.values())


def _close_all(writers: Iterable[Any]) -> None:
    """Close every one, even when one fails; the first failure is raised after."""
    failure = None
    for writer in writers:
        try:
            writer.close()
        except OSError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


class _Tags:
    """vizkit's tags over a writer's primitives (scalars, image, figure, pr_curve, embedding)."""

    def epoch(self, row: dict[str, Any], step: int) -> None:
        """A history row's numbers: Loss and Accuracy in train/ and val/, lr and speed/* in the run's own log."""
        for key, (split, name) in EPOCH_TAGS.items():
            if key in row:
                self.scalars({name: row[key]}, step, split)

    def step_loss(self, value: float, step: int) -> None:
        """The training loss at a training step: the `Loss/step` chart, beside Loss in train/."""
        self.scalars({"Loss/step": value}, step, "train")

    def feature_maps(self, images: dict[str, np.ndarray], step: int) -> None:
        for name, image in images.items():
            self.image(f"features/{name}", image, step)

    def activations(self, stats: dict[str, dict[str, float]], step: int) -> None:
        """Mean, std and dead fraction of every ReLU step's output (analysis.activation_stats)."""
        for layer, values in stats.items():
            self.scalars({f"activations/{layer}/{k}": v for k, v in values.items()}, step)

    def evaluation(
        self,
        result: Evaluation,
        classes: Sequence[str],
        figures: dict[str, Figure],
        step: int,
        embedding: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        """The test set's per-class accuracy; with `figures`, those, PR curves and the projector (`embedding`:
        features and square sprite images, the first N of the test set)."""
        per_class = zip(classes, result.per_class, strict=True)
        self.scalars({f"per_class_accuracy/{tag(c)}": float(r) for c, r in per_class}, step)
        pred = result.predictions
        for name, fig in figures.items():
            self.figure(f"eval/{name}", fig, step)
        if not figures:
            return
        for k, name in enumerate(classes):
            self.pr_curve(f"pr/{tag(name)}", (pred.labels == k).int(), pred.probs[:, k], step)
        if embedding is not None:
            features, images = embedding
            labels = [classes[int(y)] for y in pred.labels[: len(features)]]
            self.embedding(features, labels, images, step, "penultimate")


class Writer(_Tags):
    """A run's event logs: its own directory's, and one per split (train/, val/), made when first written to."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.main = _SummaryWriter(logdir=str(self.run_dir))
        self.splits: dict[str, _SummaryWriter] = {}
        self._flushed = time.monotonic()

    def _writer(self, split: str | None) -> _SummaryWriter:
        if split is None:
            return self.main
        assert split in SPLITS, split
        if split not in self.splits:
            self.splits[split] = _SummaryWriter(logdir=str(self.run_dir / split))
        return self.splits[split]

    def scalars(self, values: dict[str, float], step: int, split: str | None = None) -> None:
        """Numbers under their tags; with a `split`, into its sub-run: `Loss` in train/ and in val/ is one
        chart with two curves."""
        writer = self._writer(split)
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.main.add_text(tag, markdown, 0)

    def graph(self, model: nn.Module, example: torch.Tensor) -> bool:
        """The model graph by torch.jit.trace; False when tracing fails (the caller logs the ONNX graph then)."""
        try:
            # each module's own mode comes back afterwards (a frozen BatchNorm stays frozen)
            with modes_kept(model), warnings.catch_warnings():  # torch.jit.trace's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                self.main.add_graph(model, example)
            return True
        except OSError:
            raise
        except Exception as exc:  # tracing fails on data-dependent control flow, among others
            log.info("add_graph could not trace the model (%s); the ONNX graph is logged instead", first_line(exc))
            return False

    def onnx_graph(self, path: str | Path) -> None:
        self.main.add_onnx_graph(str(path))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An H x W x 3 uint8 picture."""
        self.main.add_image(tag, image, step, dataformats="HWC")

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        self.main.add_figure(tag, figure, step)

    def histograms(self, histograms: dict[str, Histogram], step: int) -> None:
        for tag, h in histograms.items():
            self.main.add_histogram_raw(
                tag, h.min, h.max, h.num, h.sum, h.sum_squares, h.limits, h.counts, global_step=step
            )

    def pr_curve(self, tag: str, labels: torch.Tensor, probabilities: torch.Tensor, step: int) -> None:
        self.main.add_pr_curve(tag, labels, probabilities, step)

    def embedding(
        self, features: torch.Tensor, labels: list[str], images: torch.Tensor | None, step: int, tag: str
    ) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its "Embedding dir exists" is printed, not raised
                self.main.add_embedding(features, metadata=labels, label_img=images, global_step=step, tag=tag)
        except FileNotFoundError:
            # tensorboardX swallows its makedirs' error (a disk out of space or of inodes) and fails at the first
            # file in the folder it could not make: making the folder here raises the error that counts (its
            # path as tensorboardX names it; vizkit's tags have no "/", "\\" or "%" for it to escape)
            os.makedirs(self.run_dir / f"{step:05d}" / tag, exist_ok=True)
            raise

    def hparams(self, params: dict[str, object], metrics: dict[str, float], columns: dict[str, object]) -> None:
        """One session of HParams in this run's own log. `columns` (name -> a value of its type) are listed in
        every run's experiment alike, whatever this run has: TensorBoard takes the experiment of whichever run it
        reads first, so one run's columns must not hide another's."""
        kinds = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
        experiment = api_pb2.Experiment(
            hparam_infos=[
                api_pb2.HParamInfo(
                    name=k, type=kinds.get(type(v), api_pb2.DATA_TYPE_FLOAT64), differs=k in HPARAMS_SHOWN
                )
                for k, v in columns.items()
            ],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"hparam/{t}")) for t in metrics],
        )
        start = plugin_data_pb2.SessionStartInfo()
        for k, v in params.items():
            field = "bool_value" if isinstance(v, bool) else "string_value" if isinstance(v, str) else "number_value"
            setattr(start.hparams[k], field, v)
        parts = {
            metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(experiment=experiment),
            metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=start),
            metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
                session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
            ),
        }
        file_writer = self.main._get_file_writer()
        for tag, data in parts.items():  # TensorBoard's own protos (tensorboardX's HParamInfo has no `differs`)
            meta = SummaryMetadata.FromString(metadata.create_summary_metadata(data).SerializeToString())
            file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
        self.scalars({f"hparam/{k}": v for k, v in metrics.items() if v is not None}, 0)

    def flush(self) -> None:
        """Everything written so far is on disk when this returns (rundir.log_sizes may be taken)."""
        for writer in [self.main, *self.splits.values()]:
            writer.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Safe twice, and after a failed write (which was raised where it happened)."""
        writers, self.splits = [self.main, *self.splits.values()], {}
        _close_all(writers)


class NullWriter(_Tags):
    """A writer that writes nothing: log="off", and every process but rank 0 (tensorboardX's DummyFileWriter)."""

    def scalars(self, values: dict[str, float], step: int, split: str | None = None) -> None: ...
    def text(self, tag: str, markdown: str) -> None: ...
    def graph(self, model: nn.Module, example: torch.Tensor) -> bool:
        return True

    def onnx_graph(self, path: str | Path) -> None: ...
    def image(self, tag: str, image: np.ndarray, step: int) -> None: ...
    def figure(self, tag: str, figure: Figure, step: int) -> None: ...
    def histograms(self, histograms: dict[str, Histogram], step: int) -> None: ...
    def pr_curve(self, tag: str, labels: torch.Tensor, probabilities: torch.Tensor, step: int) -> None: ...
    def embedding(self, *args: object, **kwargs: object) -> None: ...
    def hparams(self, params: dict[str, object], metrics: dict[str, float], columns: dict[str, object]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def tag(name: str) -> str:
    """A class name as a tag part: "T-shirt/top" would open a tag group of its own."""
    return name.replace("/", "-").replace(" ", "_")
