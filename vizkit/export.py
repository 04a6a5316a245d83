"""ONNX export with the normalisation inside, and its check against torch (checkpoints: checkpoint.py)."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vizkit.files import atomic_write
from vizkit.normalize import Normalized

log = logging.getLogger(__name__)


OUTPUT_NAMES = {"logits": "logits", "log-probabilities": "log_probabilities", "probabilities": "probabilities"}


def export_onnx(
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    input_shape: Sequence[int],
    path: str | Path,
    output: str = "logits",
) -> Path:
    """Export as one .onnx file: input `image` (N x C x H x W float pixels in [0, 1], N dynamic), one output
    named for what the model returns (`output`, graph.Graph.output_kind): `logits`, `log_probabilities` or
    `probabilities`."""
    path = Path(path)
    output_name = OUTPUT_NAMES[output]
    wrapped = Normalized(model, mean, std).cpu().eval()
    example = torch.rand(2, *input_shape)  # batch > 1, or the exporter specialises the batch axis to 1
    options: dict[str, Any] = {
        "input_names": ["image"],
        "output_names": [output_name],
        "external_data": False,  # one file, not model.onnx + model.onnx.data
        "verbose": False,
    }
    accepted = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in accepted:  # the torch.export-based exporter names dynamic axes by forward() argument
        # asked for by name: it is the default only from torch 2.9, and the TorchScript exporter before it
        # rejects dynamic_shapes (torch 2.5 to 2.8 failed at the end of every run)
        options["dynamo"] = True
        options["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1)}}
    else:
        options["dynamic_axes"] = {"image": {0: "batch"}, output_name: {0: "batch"}}
    options = {k: v for k, v in options.items() if k in accepted}  # older torch lacks some of these

    def write(tmp: Path) -> None:
        # the exporter prints its progress; keep it out of the user's terminal unless it fails
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            torch.onnx.export(wrapped, (example,), str(tmp), **options)

    atomic_write(path, write)
    return path


def check_onnx(
    path: str | Path, model: nn.Module, mean: Sequence[float], std: Sequence[float], batch: torch.Tensor
) -> float:
    """onnx.checker on the file, then onnxruntime's output against torch's on `batch`; the largest difference."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": batch.cpu().numpy().astype(np.float32)})
    with torch.no_grad():
        want = Normalized(model, mean, std).cpu().eval()(batch.cpu()).numpy()
    return float(np.abs(got - want).max())
