"""What the tab's requests compute: a run's model opened once, and one update for one input, ready as JSON.

Imported on the tab's first request for a model, never at TensorBoard's start (it imports torch).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vizkit import rundir
from vizkit.checkpoint import open_checkpoint
from vizkit.errors import VizkitError
from vizkit.graph import forward_graph
from vizkit.models import display_name
from vizkit.probe import Probe, probe
from vizkit.tiles import to_levels, viridis
from vizkit.units import model_map

MODELS = threading.RLock()  # every model pass and trace of the tab, one at a time (Loaded)
MAX_BARS = 1024  # units drawn for a fully connected layer (the rest are summarised by the range)


log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A run's model as the tab uses it. Every pass through it holds MODELS, the tab's one lock: the requests come
    on TensorBoard's threads, two passes at once through one model would each see the other's hooks, and torch.fx's
    tracing of any model patches nn.Module.__call__ for the whole process meanwhile (a pass through another model,
    an epoch the slider just left, would be taken into that trace)."""

    model: nn.Module
    ckpt: dict[str, Any]
    checkpoint: Path
    cache: dict[Any, Any] = field(default_factory=dict)  # what a channel's card works out once (channel.py)


def open_run(checkpoint: Path, logdir: Path | None = None) -> Loaded:
    """The run's model on the CPU in eval mode, under the inspection commands' trust rule (checkpoint.py):
    recorded user code is imported only from its own file with its recorded sha256, and never from inside
    the log directory (whoever shared a run there could have put code beside it)."""
    model, ckpt = open_checkpoint(checkpoint, shared=logdir)
    with MODELS:  # the trace (forward_graph) is made here, not in the middle of another model's pass
        forward_graph(model, ckpt["input_shape"])
    return Loaded(model, ckpt, checkpoint)


def _map(loaded: Loaded) -> dict[str, Any]:
    """units.model_map by step name; a model whose FLOPs cannot be counted still opens, without them."""
    try:
        with MODELS:  # an update's capture swaps the model's forward meanwhile
            rows = model_map(loaded.model, loaded.ckpt["input_shape"])
    except Exception as exc:
        log.info("vizkit: no map of %s (%s)", loaded.checkpoint, exc)
        return {}
    return {r.name: {"receptive_field": r.receptive_field, "flops": r.flops, "params": r.params} for r in rows}


def describe(loaded: Loaded) -> dict[str, Any]:
    ckpt = loaded.ckpt
    return {
        "ok": True,
        "checkpoint": loaded.checkpoint.name,
        "epoch": ckpt.get("epoch"),
        "model": display_name(ckpt.get("model") or "") or type(loaded.model).__name__,
        "classes": list(ckpt["classes"]),
        "input_shape": list(ckpt["input_shape"]),
        "dataset": Path(ckpt["dataset"]).name if ckpt.get("dataset") else None,  # a folder's own name
        "test_images": test_images_label(ckpt),
        "digits": ckpt.get("dataset") == "mnist",  # the page says "digit" only then
        "mean": list(ckpt["mean"]),
        "std": list(ckpt["std"]),
        "viridis": viridis().tobytes().hex(),  # the colour map of vizkit.features and the Images tab, from one table
        "map": _map(loaded),  # each step's receptive field, FLOPs and parameters, for the layer cards' headers
        "epochs": rundir.epochs_in(rundir.run_of(loaded.checkpoint)),  # the epoch slider's stops
    }


def test_images_label(ckpt: dict[str, Any]) -> str | None:
    """What the page's test-image picker picks from (inputs.test_images), or None where there is nothing."""
    examples = ckpt.get("examples")
    if ckpt.get("dataset") and (examples is None or ckpt.get("data_dir")):
        return f"{Path(ckpt['dataset']).name} test set"
    return f"the {len(examples)} examples the run kept" if examples is not None else None


_test_sets: dict[tuple[str, ...], Any] = {}


def test_set(loaded: Loaded) -> Any:
    """The run's test images (inputs.test_images: its test set where training read it, or the examples a Run kept;
    nothing is downloaded), read once for every run that reads the same ones."""
    from vizkit.data import trained_in
    from vizkit.inputs import test_images

    ckpt = loaded.ckpt
    # one copy of a dataset's test set for every run that reads it from the same place; a folder's per split
    key = (str(ckpt.get("dataset")), str(ckpt.get("data_dir") or ckpt["config"].get("data_dir")),
           str(trained_in(loaded.checkpoint)), str(ckpt["config"].get("seed")), str(ckpt["input_shape"]))  # fmt: skip
    if not ckpt.get("dataset"):
        key = (str(loaded.checkpoint),)
    if key not in _test_sets:
        _test_sets[key] = test_images(ckpt, loaded.checkpoint)
    return _test_sets[key]


def test_image(loaded: Loaded, index: int) -> tuple[torch.Tensor, int | None]:
    """Image `index` of the run's test images (test_set), as (1, C, H, W) pixels in [0, 1], and its label if known."""
    test = test_set(loaded)
    if not 0 <= index < len(test.images):
        n = len(test.images)
        raise VizkitError(f"image {index} is out of range: {test.what} has {n} images (0 to {n - 1})")
    label = int(test.labels[index]) if test.labels is not None else None
    return test.images[index : index + 1].float() / 255, label


def image_input(data_url: str, ckpt: dict[str, Any]) -> torch.Tensor:
    """A drawing or a photo (a data: URL) prepared as vizkit.predict prepares photos."""
    from vizkit.preprocess import decode_image, prepare_for

    _, _, payload = data_url.partition(",")
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError:
        raise VizkitError("the image did not arrive whole (bad base64); draw or drop it again") from None
    return prepare_for(decode_image(io.BytesIO(raw), "the image"), ckpt)


def _bytes(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.uint8).tobytes()).decode("ascii")


def input_json(pixels: torch.Tensor) -> dict[str, Any]:
    """What the model saw, (1, C, H, W) in [0, 1], as the page draws it: H x W x C bytes."""
    c, h, w = pixels.shape[1:]
    data = _bytes((pixels[0] * 255).round().clamp(0, 255).permute(1, 2, 0).numpy())
    return {"channels": c, "height": h, "width": w, "data": data}


def to_json(result: Probe, pixels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """The update as the page draws it: maps as bytes on each layer's own scale, units as numbers."""
    layers = []
    for layer in result.layers:
        entry: dict[str, Any] = {
            "name": layer.name,
            "kind": layer.kind,
            "op": layer.op,
            "inputs": layer.inputs,
            "blocks": layer.blocks,
            "shape": list(layer.values.shape),
            "output": layer.output,
        }
        if layer.values.dim() == 3:
            levels, entry["min"], entry["max"] = to_levels(layer.values)
            entry["data"] = _bytes(levels)
        else:
            values = layer.values[:MAX_BARS]
            entry["min"], entry["max"] = float(layer.values.min()), float(layer.values.max())
            entry["values"] = [round(float(v), 5) for v in values]
            if layer.output and len(values) == len(classes):
                entry["labels"] = list(classes)
        layers.append(entry)
    cam = None
    if result.cam is not None:
        cam = {"layer": result.cam_layer, "data": _bytes((result.cam.clamp(0, 1) * 255).round().numpy())}
    return {
        "ok": True,
        "input": input_json(pixels),
        "probs": [round(float(p), 6) for p in result.probs],
        "prediction": result.prediction,
        "target": result.target,
        "classes": list(classes),
        "cam": cam,
        "cam_error": result.cam_error,
        "layers": layers,
    }


def the_input(loaded: Loaded, request: dict[str, Any]) -> tuple[torch.Tensor, int | None]:
    """The request's input (a drawing, a test image, or a photo) as (1, C, H, W) pixels, and its label if known."""
    source = request.get("source")
    if source == "test":
        index = request.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise VizkitError("a test image is picked by its number (0, 1, 2, ...)")
        return test_image(loaded, index)
    if source in ("draw", "photo"):
        return image_input(str(request.get("image", "")), loaded.ckpt), None
    raise VizkitError(f"unknown input source {source!r}: draw, test or photo")


def update(loaded: Loaded, request: dict[str, Any]) -> dict[str, Any]:
    """One update of the tab: the input (drawn, a test image, or a photo), the model's pass, JSON out."""
    started = time.perf_counter()
    ckpt = loaded.ckpt
    pixels, label = the_input(loaded, request)
    target = request.get("target")
    classes = list(ckpt["classes"])
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(classes)
    ):
        raise VizkitError(f"class {target!r} is not one of this model's {len(classes)} classes")
    with MODELS:
        result = probe(loaded.model, ckpt["mean"], ckpt["std"], pixels, target, classes)
    if not torch.isfinite(result.probs).all():
        raise VizkitError(
            "the model's output is not a number (NaN or inf) for this input; its weights may have diverged"
        )
    answer = to_json(result, pixels, classes)
    answer["label"] = label
    answer["epoch"] = ckpt.get("epoch")  # which weights answered (the epoch slider's, or best.pth's)
    answer["server_ms"] = round(1000 * (time.perf_counter() - started), 2)
    return answer
