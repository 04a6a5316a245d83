"""What goes into a run's TensorboardX event log, under which tag, and when.

What a person sees first decides the layout. TensorBoard opens on Time Series, which groups tags by their
first `/` part, sorts the groups (upper case before lower case) and expands only the first two. So the
per-epoch `Loss` and `Accuracy` are written, as Keras does, under the same tag in two sub-runs, `train/`
and `val/`: one chart each with both curves, and the first two groups. Then lr, speed/*, features/*,
weights/*, grads/*, activations/*, samples/*, eval/*, per_class_accuracy/*, pr/*, hparam/*, and the
embedding projector, in the run's own directory. Levels: "full" logs everything, "scalars" only numbers,
"off" writes no event file at all.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from torch import nn

from vizkit.analysis import Histogram, Predictions
from vizkit.hooks import modes_kept
from vizkit.plots import samples_figure
from vizkit.tiles import layer_image

log = logging.getLogger(__name__)

TENSORBOARD_IMAGES_PER_TAG = 10  # TensorBoard shows 10 images per tag unless --samples_per_plugin says more
SPLITS = ("train", "val")  # sub-runs whose curves share a chart
# HParams shows 5 columns at first, those whose values differ across runs first, then by name: these are
# marked as differing so they are the 5 shown, even for a single run
HPARAMS_SHOWN = ("model", "optimizer", "lr", "epochs", "batch_size")


def image_epochs(epochs: int, limit: int = TENSORBOARD_IMAGES_PER_TAG) -> set[int]:
    """At most `limit` epochs, evenly spread and always the first and last, on which images are logged."""
    if epochs <= limit:
        return set(range(1, epochs + 1))
    return {round(1 + i * (epochs - 1) / (limit - 1)) for i in range(limit)}


class RunLogger:
    """A SummaryWriter that knows vizkit's tags and levels; a context manager, and close() is safe twice."""

    def __init__(
        self, run_dir: str | Path, level: str = "full", epochs: int | None = 1, purge_step: int | None = None
    ) -> None:
        """`purge_step`: on resume, the first step to log again; TensorBoard drops what an interrupted
        epoch left at or after it, so resumed curves have no doubled segment."""
        self.level = level
        self.writer = SummaryWriter(logdir=str(run_dir), purge_step=purge_step) if level != "off" else None
        self.run_dir, self.purge_step = Path(run_dir), purge_step
        self.split_writers: dict[str, SummaryWriter] = {}  # made when first written to
        self.image_epochs = image_epochs(epochs) if epochs else None  # None: epochs unknown, every epoch

    @property
    def full(self) -> bool:
        return self.level == "full"

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for writer in self.split_writers.values():
            writer.close()
        self.split_writers = {}
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def split_scalars(self, split: str, values: dict[str, float], step: int) -> None:
        """Numbers of one split ("train" or "val") into its sub-run: tag `Loss` in train/ and in val/ is one
        chart with two curves."""
        if self.writer is None:
            return
        if split not in self.split_writers:
            self.split_writers[split] = SummaryWriter(logdir=str(self.run_dir / split), purge_step=self.purge_step)
        for tag, value in values.items():
            self.split_writers[split].add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown, 0)

    def graph(self, model: nn.Module, example: torch.Tensor) -> bool:
        """The model graph by torch.jit.trace; False when tracing fails (the caller logs the ONNX graph then)."""
        if not self.full:
            return True
        try:
            # each module's own mode comes back afterwards (a frozen BatchNorm stays frozen)
            with modes_kept(model), warnings.catch_warnings():  # torch.jit.trace's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example)
            return True
        except Exception as exc:  # tracing fails on data-dependent control flow, among others
            log.info("add_graph could not trace the model (%s); the ONNX graph is logged instead", exc)
            return False

    def onnx_graph(self, path: str | Path) -> None:
        if self.full:
            self.writer.add_onnx_graph(str(path))

    def samples(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
        """The first training images with their labels, as recipe 003 shows them."""
        if self.full:
            self.writer.add_figure("samples/train", samples_figure(images.cpu(), labels.cpu(), classes), 0)

    def wants_images(self, epoch: int) -> bool:
        """Whether feature maps are logged this epoch (so the caller computes them only then)."""
        return self.full and (self.image_epochs is None or epoch in self.image_epochs)

    def feature_maps(self, maps: dict[str, torch.Tensor], kinds: dict[str, str], epoch: int) -> None:
        """Each step's output (N, C, H, W) for a fixed input (the first of the N): one picture per step,
        numbered tiles of at least 28 px on the step's own viridis scale (tiles.layer_image); `kinds` says what
        each step is (Conv2d, +) for its title."""
        if self.wants_images(epoch):
            for name, activation in maps.items():
                _, c, h, w = activation.shape
                title = f"{name} ({kinds.get(name, '')}): {c} channels, {h}x{w}"
                self.writer.add_image(f"features/{name}", layer_image(activation[0], title), epoch, dataformats="HWC")

    def histograms(self, histograms: dict[str, Histogram], epoch: int) -> None:
        """Weights and (the last step's) gradients of every parameter (analysis.parameter_histograms)."""
        if self.full:
            for tag, h in histograms.items():
                self.writer.add_histogram_raw(
                    tag, h.min, h.max, h.num, h.sum, h.sum_squares, h.limits, h.counts, global_step=epoch
                )

    def hparams(self, params: dict[str, object], metrics: dict[str, float]) -> None:
        """hparams in this run's own event log (add_hparams would open a new subfolder per call), with model,
        optimizer, lr, epochs and batch size the columns HParams shows by default."""
        if self.writer is None:
            return
        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items() if v is not None}
        tagged = {f"hparam/{k}": v for k, v in metrics.items()}
        kinds = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
        experiment = api_pb2.Experiment(
            hparam_infos=[
                api_pb2.HParamInfo(
                    name=k, type=kinds.get(type(v), api_pb2.DATA_TYPE_FLOAT64), differs=k in HPARAMS_SHOWN
                )
                for k, v in clean.items()
            ],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in tagged],
        )
        start = plugin_data_pb2.SessionStartInfo()
        for k, v in clean.items():
            field = "bool_value" if isinstance(v, bool) else "string_value" if isinstance(v, str) else "number_value"
            setattr(start.hparams[k], field, v)
        parts = {
            metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(experiment=experiment),
            metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=start),
            metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
                session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
            ),
        }
        file_writer = self.writer._get_file_writer()
        for tag, data in parts.items():  # TensorBoard's own protos (tensorboardX's HParamInfo has no `differs`)
            meta = SummaryMetadata.FromString(metadata.create_summary_metadata(data).SerializeToString())
            file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
        self.scalars(tagged, 0)

    def activations(self, stats: dict[str, dict[str, float]], epoch: int) -> None:
        """Mean, std and dead fraction of every ReLU layer's output (analysis.activation_stats)."""
        if self.full:
            for layer, values in stats.items():
                self.scalars({f"activations/{layer}/{k}": v for k, v in values.items()}, epoch)

    def evaluation(
        self,
        pred: Predictions,
        per_class: Sequence[float],
        figures: dict[str, Figure],
        images: torch.Tensor | None,
        classes: Sequence[str],
        step: int,
        embed: int = 1000,
    ) -> None:
        """The test set's per-class accuracy, figures (confusion matrix, top losses), PR curves and projector.

        `images`: the test images as pixels in [0, 1], for the projector's sprite."""
        if self.writer is None:
            return
        self.scalars({f"per_class_accuracy/{_tag(c)}": float(r) for c, r in zip(classes, per_class, strict=True)}, step)
        if not self.full:
            return
        for name, fig in figures.items():
            self.writer.add_figure(f"eval/{name}", fig, step)
        for k, name in enumerate(classes):
            self.writer.add_pr_curve(f"pr/{_tag(name)}", (pred.labels == k).int(), pred.probs[:, k], step)
        if pred.features is not None:
            n = min(embed, len(pred.labels))
            self.writer.add_embedding(
                pred.features[:n],
                metadata=[classes[int(y)] for y in pred.labels[:n]],
                label_img=_square(images[:n].float()) if images is not None else None,
                global_step=step,
                tag="penultimate",
            )


def _tag(name: str) -> str:
    return name.replace("/", "-").replace(" ", "_")  # "T-shirt/top" would open a tag group of its own


def _square(images: torch.Tensor) -> torch.Tensor:
    """Non-square images (N, C, H, W) centred on black squares: the projector's sprite takes square ones only."""
    h, w = images.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return torch.nn.functional.pad(images, (left, side - w - left, top, side - h - top))
