"""Checkpoints (.pth, loaded with weights_only=True) and ONNX export with the normalisation inside."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vizkit.errors import VizkitError
from vizkit.files import atomic_write
from vizkit.models import get_model

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "state_dict", "config", "classes", "mean", "std", "input_shape")


def save_checkpoint(path: str | Path, model: nn.Module, /, **fields: Any) -> Path:
    """Save the state dict with what is needed to rebuild and feed the model (see CHECKPOINT_KEYS)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, **fields}
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint fields missing: {missing}")
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with weights_only=True: a pickle that carries code is refused."""
    path = Path(path)
    if not path.is_file():
        raise VizkitError(f"checkpoint {path} does not exist; give a .pth written by vizkit.train")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has lost its directory
        raise VizkitError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y", by version
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        what = f" ({found.group(1)})" if found else ""
        raise VizkitError(
            f"{path} was refused by safe loading (weights_only=True): it would run code{what}; "
            "use only checkpoints from vizkit.train"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VizkitError(f"{path} is not a readable checkpoint (truncated or another format): {first[:160]}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise VizkitError(f"{path} is not a vizkit checkpoint (no model name, config and normalisation in it)")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint on the CPU, in eval mode, and return it with the checkpoint dict."""
    ckpt = read_checkpoint(path)
    channels, size = ckpt["input_shape"][0], ckpt["input_shape"][-1]
    model = get_model(ckpt["model"], in_channels=channels, image_size=size, num_classes=len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise VizkitError(f"{path} does not match model '{ckpt['model']}': {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, ckpt


class Normalized(nn.Module):
    """model((x - mean) / std): takes pixels in [0, 1], so the file carries its own preprocessing."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def export_onnx(
    model: nn.Module, mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int], path: str | Path
) -> Path:
    """Export as one .onnx file: input `image` (N x C x H x W float pixels in [0, 1], N dynamic), output `logits`."""
    path = Path(path)
    wrapped = Normalized(model, mean, std).cpu().eval()
    example = torch.rand(2, *input_shape)  # batch > 1, or the exporter specialises the batch axis to 1
    options: dict[str, Any] = {
        "input_names": ["image"],
        "output_names": ["logits"],
        "external_data": False,  # one file, not model.onnx + model.onnx.data
        "verbose": False,
    }
    accepted = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in accepted:  # the torch.export-based exporter names dynamic axes by forward() argument
        options["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1)}}
    else:
        options["dynamic_axes"] = {"image": {0: "batch"}, "logits": {0: "batch"}}
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
    """onnx.checker on the file, then onnxruntime's logits against torch's on `batch`; the largest difference."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": batch.cpu().numpy().astype(np.float32)})
    with torch.no_grad():
        want = Normalized(model, mean, std).cpu().eval()(batch.cpu()).numpy()
    return float(np.abs(got - want).max())


def find_checkpoint(run: str | None = None, checkpoint: str | None = None, runs_root: str | Path = "runs") -> Path:
    """The checkpoint to inspect: --checkpoint as given, a run directory's best.pth, or the newest run's."""
    if checkpoint:
        return Path(checkpoint)
    if run:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise VizkitError(f"run directory {run_dir} does not exist")
        for name in ("best.pth", "last.pth"):
            if (run_dir / name).is_file():
                return run_dir / name
        raise VizkitError(f"{run_dir} holds no best.pth or last.pth; train first (python -m vizkit.train)")
    runs = [p for p in Path(runs_root).glob("*/best.pth")] if Path(runs_root).is_dir() else []
    if not runs:
        raise VizkitError(f"no trained run under {runs_root}/; train one (python -m vizkit.train) or give --checkpoint")
    return max(runs, key=lambda p: p.stat().st_mtime)
