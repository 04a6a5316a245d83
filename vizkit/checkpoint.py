"""The checkpoint format, defined once: what a .pth holds, how it is saved and read, and which model it rebuilds.

A vizkit checkpoint is a dict of plain values (so `torch.load(weights_only=True)` reads it):

    state_dict   the model's weights, on the CPU
    model        a zoo name, or the user model's spec (`/abs/path/file.py:NAME` or `package.module:NAME`)
    model_args   keyword arguments NAME(...) was called with
    model_source {path, sha256} of the user model's file at training time, or None for zoo models
    config       the settings it was trained with; classes, mean, std, input_shape [C, H, W]
    dataset      a dataset's name, the absolute path of a folder of images, or None (a Run's unknown data)
    data_source  where the data came from, for the record: the dataset, or "your own training loop"
    data_dir     the absolute folder of a named dataset's files, where the inspection commands find its test set
    examples     up to 64 uint8 images (N, C, H, W) a Run kept, for the inspection commands, when not told its data
    epoch, val_accuracy, and in last.pth `resume` (the training state --resume continues from)

A bare state dict from a hand-written loop (`torch.save(model.state_dict(), 'cnn.pth')`, or one under
`state_dict`, `model_state_dict` or `model`) opens too, with --model naming the code and the dataset's
normalisation unless --mean/--std say otherwise.

Trust: a user model's code is imported only when the person named it (--model), or when the checkpoint's
code record (model, model_args, model_source) carries their own signature (signing.py: made when they trained
it, or by python -m vizkit.trust after reading the code) and the recorded file is still at its path with the
recorded sha256. A run directory shared with someone else therefore runs no code they did not choose, the
promise weights_only makes for pickles.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import pickletools
import re
import site
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vizkit import rundir, signing
from vizkit.data import get_spec
from vizkit.errors import VizkitError, first_line
from vizkit.files import atomic_write
from vizkit.models import display_name, get_model, is_user_model, locate_code, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "state_dict", "config", "classes", "mean", "std", "input_shape")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # where tutorials put the weights in a dict
MAX_EXAMPLES = 64  # images a Run keeps for the inspection commands when it knows no dataset
MAX_SIDE, MAX_CLASSES = 4096, 100_000  # what a checkpoint may ask a model to be built for (the factory is called)


def model_fields(spec: str, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `model`, `model_args` and `model_source` entries for a model spec: a user model's file and the
    `__init__.py` of each package importing it runs, each with its sha256."""
    source = None
    if spec and is_user_model(spec):
        path, packages = locate_code(spec)
        if path is not None and path.is_file():
            source = {"path": str(path), "sha256": sha256_file(path)}
            if packages:
                source["packages"] = [{"path": str(p), "sha256": sha256_file(p)} for p in packages]
    return {"model": spec, "model_args": dict(model_args or {}), "model_source": source}


def resign(path: Path, ckpt: dict[str, Any]) -> None:
    """Sign a checkpoint's code record with this person's key (python -m vizkit.trust), rewritten atomically."""
    signed = {**ckpt, "signature": signing.sign(ckpt)}
    try:
        atomic_write(path, lambda tmp: torch.save(signed, tmp))
    except OSError as exc:
        raise VizkitError(
            f"cannot write {path}: {exc.strerror or exc}; copy the run somewhere of yours first"
        ) from None


def save_checkpoint(path: str | Path, model: nn.Module, /, **fields: Any) -> Path:
    """Save the state dict with what is needed to rebuild and feed the model (see CHECKPOINT_KEYS)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, **fields}
    if fields.get("model_source") is not None:  # what this person trains, they trust (signing.py)
        payload["signature"] = signing.sign(payload)
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint fields missing: {missing}")
    # into memory first: torch's zip writer reports a full disk as a RuntimeError, a file write as OSError
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()))
    return Path(path)


def _pickled_globals(path: Path) -> list[str]:
    """The classes and functions a torch.save pickle refers to, read off its opcodes (nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # a damaged archive: the caller's own error says so
        return []


def _load(path: Path) -> Any:
    """torch.load with weights_only=True, every failure one line."""
    if not path.is_file():
        raise VizkitError(f"checkpoint {path} does not exist; give a .pth written by torch.save or vizkit.train")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has lost its directory
        raise VizkitError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(g.startswith("torch.nn.modules.") for g in _pickled_globals(path)):
            raise VizkitError(
                f"{path} holds a whole pickled model (torch.save(model)), which safe loading refuses because "
                "unpickling it runs code; save the weights instead with torch.save(model.state_dict(), "
                f"'{path.name}') and open it with --model PATH.py:NAME"
            ) from None
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y", by version
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        what = f" ({found.group(1)})" if found else ""
        raise VizkitError(
            f"{path} was refused by safe loading (weights_only=True): it would run code{what}; "
            "use only checkpoints of weights (a state dict) or from vizkit.train"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise VizkitError(
            f"{path} is not a readable checkpoint (truncated or another format): {first_line(exc, 160)}"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A vizkit checkpoint's dict, loaded with weights_only=True: a pickle that carries code is refused."""
    path = Path(path)
    ckpt = _load(path)
    if not is_vizkit_checkpoint(ckpt):
        raise VizkitError(f"{path} is not a vizkit checkpoint (no model name, config and normalisation in it)")
    _check_fields(ckpt, path)
    return ckpt


def is_vizkit_checkpoint(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and all(k in ckpt for k in CHECKPOINT_KEYS)


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """Each field of the format has its type, so a hand-edited checkpoint is one line, not a traceback."""
    source = ckpt.get("model_source")
    problems = {
        "model": isinstance(ckpt["model"], str),
        "model_args": isinstance(ckpt.get("model_args") or {}, dict),
        "model_source": source is None or (_file_record(source) and all(map(_file_record, source.get("packages", [])))),
        "state_dict": _is_state_dict(ckpt["state_dict"]),
        "config": isinstance(ckpt["config"], dict)
        and all(isinstance(ckpt["config"].get(k, ""), str) for k in ("data_dir", "model", "dataset")),
        "classes": isinstance(ckpt["classes"], list) and 0 < len(ckpt["classes"]) <= MAX_CLASSES,
        "mean": _per_channel(ckpt["mean"], ckpt["input_shape"]),
        "std": _per_channel(ckpt["std"], ckpt["input_shape"]) and all(v > 0 for v in ckpt["std"]),
        "input_shape": isinstance(ckpt["input_shape"], list)
        and len(ckpt["input_shape"]) == 3
        and all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in ckpt["input_shape"]),
        # where the data came from (optional): names and paths, and at most 64 example images of the input shape
        **{k: ckpt.get(k) is None or isinstance(ckpt.get(k), str) for k in ("dataset", "data_dir", "data_source")},
        "signature": ckpt.get("signature") is None
        or (isinstance(ckpt["signature"], str) and ckpt["signature"].isascii()),
        "examples": ckpt.get("examples") is None
        or (
            isinstance(ckpt["examples"], torch.Tensor)
            and ckpt["examples"].dtype == torch.uint8
            and ckpt["examples"].dim() == 4
            and 0 < len(ckpt["examples"]) <= MAX_EXAMPLES
            and list(ckpt["examples"].shape[1:]) == ckpt["input_shape"]
        ),  # fmt: skip
    }
    bad = [k for k, ok in problems.items() if not ok]
    if bad:
        raise VizkitError(f"{path} is not a valid vizkit checkpoint: its {', '.join(bad)} field is malformed")


def _file_record(value: Any) -> bool:
    """{path, sha256} of a file, as model_fields records it (no NUL: a path the filesystem could take)."""
    return (isinstance(value, dict) and isinstance(value.get("path"), str) and "\0" not in value["path"]
            and isinstance(value.get("sha256"), str))  # fmt: skip


def _per_channel(values: Any, shape: Any) -> bool:
    """A finite number per input channel (what the normalisation needs)."""
    numbers = isinstance(values, list) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    return numbers and isinstance(shape, list) and len(shape) == 3 and len(values) == shape[0]


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def bare_state_dict(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """The weights of a hand-written loop's checkpoint: a state dict, or one inside a dict under a usual key."""
    if _is_state_dict(ckpt):
        return dict(ckpt)
    if isinstance(ckpt, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(ckpt.get(key)):
                return dict(ckpt[key])
    raise VizkitError(
        f"{path} holds no state dict (a dict of tensors, or one under {', '.join(WRAPPER_KEYS)}); "
        "save one with torch.save(model.state_dict(), PATH)"
    )


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """load_state_dict, with every mismatch (missing, unexpected, other shapes) said in one line."""
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel/DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} ({'x'.join(map(str, state[k].shape))} in the file, {'x'.join(map(str, own[k].shape))} in the model)"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = (
        [f"missing {_names(missing)}"] * bool(missing)
        + [f"unexpected {_names(unexpected)}"] * bool(unexpected)
        + [f"other shapes: {_names(shapes, 2)}"] * bool(shapes)
    )
    if problems:
        raise VizkitError(
            f"{path} does not match model '{name}': {'; '.join(problems)}; "
            "give the --model these weights were trained with"
        )
    model.load_state_dict(state)


def _installed_code_dirs() -> list[Path]:
    """Where code comes with Python or its packages: a checkpoint may not name a file there by itself
    (os.py's hash is known to anyone, and its functions do anything with the arguments a checkpoint gives)."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    dirs.add(site.getusersitepackages())
    dirs.add(str(Path(__file__).resolve().parent))  # vizkit itself
    return [Path(d).resolve() for d in dirs if d]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def trusted_spec(ckpt: dict[str, Any], path: Path, shared: Path | None = None) -> str:
    """The recorded model spec, if its code may be imported without the person naming it (see the module doc).

    `shared`: a folder whose runs come from anywhere (the log directory TensorBoard serves): code recorded
    inside it is refused like code in the run's own folder, since whoever shared a run could have put it there."""
    spec = ckpt["model"]
    if spec and not is_user_model(spec):
        return spec
    how = _how(ckpt, path)
    recorded = recorded_code(ckpt, path, shared)
    if not signing.signed(ckpt):  # not trained here by this person, or edited since: anyone could have written it
        raise VizkitError(
            f"{path} is not signed with your key (a run from someone else, or edited), so {recorded[0]} is not "
            f"imported; read that file, then: python -m vizkit.trust {rundir.run_of(path)}, or {how}"
        )
    unchanged_code(ckpt, path)
    return spec


def _how(ckpt: dict[str, Any], path: Path) -> str:
    spec = ckpt["model"]
    copy = rundir.run_of(path) / rundir.SOURCE
    kept = f" (the training source is kept in {copy})" if copy.is_dir() else ""
    return f"pass --model PATH.py:{display_name(spec) if spec else 'NAME'} to use code you chose{kept}"


def recorded_code(ckpt: dict[str, Any], path: Path, shared: Path | None = None) -> list[Path]:
    """The files a checkpoint's recorded spec imports (its file, then its packages' __init__.py), if none lies
    where a sharer could have put it or where Python's own code is; else one error."""
    spec, source, how = ckpt["model"], ckpt.get("model_source"), _how(ckpt, path)
    if not spec or not source:
        what = f"'{spec}'" if spec else "a model vizkit cannot name (built inline, e.g. an nn.Sequential in a script)"
        raise VizkitError(f"{path} was trained with {what} and no source file was recorded; {how}")
    files = [Path(source["path"])] + [Path(p["path"]) for p in source.get("packages", [])]
    try:
        files = [f.resolve() for f in files]
        # the folder that holds the checkpoint, not the one a symbolic link to it points into
        run_folder = rundir.run_of(Path(os.path.abspath(path))).resolve()
        shared_folder = shared.resolve() if shared is not None else run_folder
    except (OSError, ValueError) as exc:
        raise VizkitError(f"{path} records a path that cannot be followed ({first_line(exc)}); {how}") from None
    for recorded in files:
        if _inside(recorded, run_folder) or _inside(recorded, shared_folder):
            where = "the checkpoint's own folder" if _inside(recorded, run_folder) else f"the log directory {shared}"
        elif any(_inside(recorded, d) for d in _installed_code_dirs()):
            where = "Python's or a package's own code"
        else:
            continue
        raise VizkitError(
            f"{path} names its model code in {recorded}, which is {where}, not a model file of yours; "
            f"it is not imported: {how}"
        )
    return files


def unchanged_code(ckpt: dict[str, Any], path: Path) -> None:
    """Each file the spec imports is where it was at training (found as import would find it), unchanged."""
    source, how = ckpt["model_source"], _how(ckpt, path)
    located, packages = locate_code(ckpt["model"])
    records = [source, *source.get("packages", [])]
    found = [str(p) for p in ([located] if located else []) + packages]
    if found != [str(Path(r["path"]).resolve()) for r in records] or not all(Path(f).is_file() for f in found):
        raise VizkitError(
            f"{path} would import its model from {source['path']}, which is not there (or another file would be "
            f"imported in its place); vizkit imports a run's code only from the files it was trained with, so {how}"
        )
    for record in records:
        if sha256_file(Path(record["path"])) != record["sha256"]:
            raise VizkitError(
                f"{path} would import its model from {record['path']}, which has changed since training (sha256 "
                f"differs), so it is not imported; {how}"
            )


def bare_description(model: str, dataset: str) -> dict[str, Any]:
    """What a bare state dict does not say, taken from --model and the dataset (MNIST unless --dataset)."""
    info = get_spec(dataset)
    return {
        "model": model,
        "model_args": {},
        "config": {},
        "classes": list(info.classes),
        "mean": list(info.mean),
        "std": list(info.std),
        "input_shape": [info.channels, info.size, info.size],
        "dataset": info.name,
        "norm_source": f"{info.name}'s, the default for a bare state dict",
    }


def given_normalisation(
    ckpt: dict[str, Any], mean: Sequence[float] | None, std: Sequence[float] | None
) -> dict[str, Any]:
    """--mean/--std over what the checkpoint says: one value for every channel, or one per channel."""
    channels = ckpt["input_shape"][0]
    mean, std = list(mean or ckpt["mean"]), list(std or ckpt["std"])
    mean, std = (v * channels if len(v) == 1 else v for v in (mean, std))  # one value: every channel
    finite = all(math.isfinite(v) for v in mean + std)
    if len(mean) != channels or len(std) != channels or not finite or any(s <= 0 for s in std):
        counts = "1 value" if channels == 1 else f"1 or {channels} values"
        raise VizkitError(f"--mean and --std need {counts} each (one per channel), std > 0")
    return {"mean": mean, "std": std, "norm_source": "from --mean/--std"}


def open_checkpoint(
    path: str | Path,
    model: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dataset: str | None = None,
    model_args: dict[str, Any] | None = None,
    shared: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a checkpoint's model on the CPU, in eval mode, with the dict describing it.

    `model` (from --model) names the code to build; without it, a vizkit checkpoint's recorded model is used
    under the trust rule. A bare state dict needs `model`; its normalisation is `mean`/`std`, else the
    dataset's; `model_args` (with `model`) are NAME's keyword arguments. The dict's `norm_source` says
    where the normalisation came from, for figure titles. `shared`: see trusted_spec.
    """
    path = Path(path)
    raw = _load(path)
    if is_vizkit_checkpoint(raw):
        _check_fields(raw, path)
        ckpt = dict(raw)
        ckpt["norm_source"] = "from the checkpoint"
        spec = model or trusted_spec(ckpt, path, shared)
        state = ckpt["state_dict"]
    else:
        state = bare_state_dict(raw, path)
        if not model:
            raise VizkitError(
                f"{path} is a bare state dict: it holds weights but not which code they belong to; "
                "name it with --model PATH.py:NAME (your model's file and class)"
            )
        spec, ckpt = model, bare_description(model, dataset or "mnist")
    if model_args:
        if not model:
            raise VizkitError("model arguments go with --model: name the code they are for")
        ckpt["model_args"] = {**(ckpt.get("model_args") or {}), **model_args}
    if mean is not None or std is not None:
        ckpt.update(given_normalisation(ckpt, mean, std))
    channels, height, width = ckpt["input_shape"]
    size = height if height == width else (height, width)  # a Run on non-square pictures
    # code the checkpoint named (not the person) must be an nn.Module class or a function of that very file
    net = get_model(spec, channels, size, len(ckpt["classes"]), ckpt.get("model_args") or {}, own_only=not model)
    load_weights(net, state, path, display_name(spec))
    net.eval()
    if ckpt["norm_source"].endswith("the default for a bare state dict"):  # none recorded or given: say which
        log.warning(
            "%s records no normalisation; assuming %s's (mean %s, std %s): if you trained with other values, "
            "give them with --mean/--std (--mean 0 --std 1 for ToTensor() alone)",
            path.name, ckpt["dataset"], ",".join(map(str, ckpt["mean"])), ",".join(map(str, ckpt["std"])),
        )  # fmt: skip
    ckpt["model"] = spec
    return net, ckpt


def normalisation_note(ckpt: dict[str, Any]) -> str:
    """`mean 0.1307, std 0.3081 (from the checkpoint)`: which normalisation a figure was drawn with."""
    fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)  # noqa: E731
    return f"normalised with mean {fmt(ckpt['mean'])}, std {fmt(ckpt['std'])} ({ckpt.get('norm_source', '')})"
