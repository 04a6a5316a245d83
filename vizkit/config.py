"""TrainConfig: every setting of a training run, loaded from TOML and overridden by flags. No torch here."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vizkit.errors import VizkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("full", "scalars", "off")
# past this, the optimizer's step (Adam divides by 1 - beta1, 1000 for beta1 0.999) overflows float32 in torch
# and raises; below it, a learning rate that large gives a NaN loss, which training stops on in one line
MAX_LR = 1e30
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # installed with the package: any directory works


@dataclass
class TrainConfig:
    """One training run. The defaults are vizkit's default recipe (recipes/default.toml says the same)."""

    model: str = "vizkit"  # a zoo name, PATH.py:NAME or package.module:NAME (see models.py)
    dataset: str = "mnist"  # mnist, fashion-mnist, cifar10, or a folder of images with a sub-folder per class
    image_size: int = 0  # a folder's images are resized to this side; 0 = the most common one
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.005
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam and AdamW
    weight_decay: float = 0.0
    scheduler: str = "onecycle"
    step_size: int = 5  # StepLR: epochs between decays
    gamma: float = 0.5  # StepLR: factor per decay
    seed: int = 0
    limit_train: int = 0  # first N training images; 0 = all
    val_size: int = 5000  # the last N training images; never trained on
    augment: bool = False  # small random affine on each training batch
    mean: list[float] = field(default_factory=list)  # empty = the dataset's own statistics
    std: list[float] = field(default_factory=list)
    data_dir: str = "data"
    run_dir: str = ""  # empty = runs/<date>-<time>-<model>
    device: str = "auto"
    log: str = "full"
    log_every: int = 50  # training steps between loss points in the event log
    keep_epochs: bool = True  # each epoch's weights in epochs/ (the default model's: 0.4 MB an epoch)
    eval_batch_size: int = 1000
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a user model's NAME(...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _kind(name: str) -> type:
    # The type of a field, read off its default value (annotations are strings here).
    value = getattr(TrainConfig(), name)
    return type(value)


def _plain(value: Any) -> bool:
    """A value a checkpoint can hold under weights_only (TOML's dates and times cannot)."""
    if isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _check_type(name: str, value: Any, source: str) -> Any:
    kind = _kind(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and _plain(v) for k, v in value.items()):
            raise VizkitError(
                f"{source}: '{name}' must be a table of keyword arguments (strings, numbers, booleans, lists), "
                f"got {value!r}"
            )
        return dict(value)
    if kind is list:
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise VizkitError(f"{source}: '{name}' must be a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise VizkitError(f"{source}: '{name}' must be {kind.__name__}, got {value!r}")
    return value


def from_dict(values: dict[str, Any], source: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from `values` on top of `base`; an unknown key is an error that names it.

    `model_args.KEY` (from `--set model_args.KEY=VALUE`) adds one keyword argument to the base's table."""
    values = dict(values)
    dotted = {k: values.pop(k) for k in [k for k in values if k.startswith("model_args.")]}
    if dotted:
        table = _check_type("model_args", values.get("model_args", (base or TrainConfig()).model_args), source)
        table.update({k.partition(".")[2]: v for k, v in dotted.items()})
        values["model_args"] = table
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise VizkitError(f"{source}: unknown key {', '.join(map(repr, unknown))}; valid keys: {', '.join(FIELDS)}")
    checked = {k: _check_type(k, v, source) for k, v in values.items()}
    return validate(dataclasses.replace(base or TrainConfig(), **checked), source)


def resolve_config_path(name: str) -> Path:
    """A path as given, or a recipe name (`001-net` -> vizkit/recipes/001-net.toml, inside the package)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = RECIPES_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if "/" not in name and candidate.is_file():
        return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    hint = f"; recipes: {', '.join(known)}" if known else ""
    raise VizkitError(f"config file '{name}' not found{hint}")


def load_config(name: str, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML experiment file (a path or a recipe name)."""
    path = resolve_config_path(name)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise VizkitError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VizkitError(f"cannot read config file {path}: {exc}") from None
    return from_dict(values, str(path), base)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`, the value read as TOML (`lr=0.1`, `mean=[0.5]`) or else as a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    head, dot, tail = key.partition(".")
    key = head.replace("-", "_") + dot + tail  # model_args.my-key keeps its own spelling
    if not sep or not key:
        raise VizkitError(f"--set expects key=value, got '{text}'")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def validate(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """Reject values that cannot run, with the allowed ones in the message."""
    for name, value in cfg.to_dict().items():
        if isinstance(value, str) and not _utf8(value):  # a byte no encoding decodes: config.toml can't hold it
            raise VizkitError(f"{source}: '{name}' is not valid UTF-8 ({value!r}); give a name in UTF-8")
    choices = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "device": DEVICES, "log": LOG_LEVELS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise VizkitError(f"{source}: unknown {name} '{getattr(cfg, name)}'; choose one of {', '.join(allowed)}")
    positive = ("epochs", "batch_size", "log_every", "eval_batch_size", "step_size")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise VizkitError(f"{source}: '{name}' must be at least 1, got {getattr(cfg, name)}")
    if not (0 < cfg.lr <= MAX_LR and math.isfinite(cfg.lr)):
        raise VizkitError(f"{source}: 'lr' must be a positive number up to {MAX_LR:g}, got {cfg.lr}")
    if not 0 <= cfg.seed < 2**63:  # what torch.manual_seed takes
        raise VizkitError(f"{source}: 'seed' must be from 0 to 2**63 - 1, got {cfg.seed}")
    if cfg.image_size < 0:
        raise VizkitError(f"{source}: 'image_size' must be 0 (the most common) or more, got {cfg.image_size}")
    if cfg.limit_train < 0:
        raise VizkitError(f"{source}: 'limit_train' must be 0 or more, got {cfg.limit_train}")
    if cfg.val_size < 1:  # the best epoch is chosen on validation: with none there is nothing to choose by
        raise VizkitError(
            f"{source}: 'val_size' must be at least 1 (validation picks the best epoch), got {cfg.val_size}"
        )
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise VizkitError(f"{source}: 'betas' must be two numbers in [0, 1), got {cfg.betas}")
    if cfg.weight_decay < 0 or cfg.momentum < 0:
        raise VizkitError(f"{source}: 'weight_decay' and 'momentum' must be 0 or more")
    if (len(cfg.mean) != len(cfg.std) or not all(math.isfinite(v) for v in cfg.mean + cfg.std)
            or any(s <= 0 for s in cfg.std)):  # fmt: skip
        raise VizkitError(f"{source}: 'mean' and 'std' must have the same length, finite, std > 0 (or both be empty)")
    return cfg


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate: how Python hands on an argument's undecodable bytes
        return False
    return True


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return _toml_string(value)


def _toml_string(value: Any) -> str:
    # a JSON string is a valid TOML basic string, as long as it is not ASCII-escaped: TOML has no surrogate pairs
    return json.dumps(str(value), ensure_ascii=False)


def dict_to_toml(values: dict[str, Any]) -> str:
    """Plain keys first, then one table per dict value (TOML puts tables after every plain key)."""
    plain = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if not isinstance(v, dict))
    tables = "".join(
        f"\n[{k}]\n" + "".join(f"{_toml_string(a)} = {_toml_value(b)}\n" for a, b in v.items())
        for k, v in values.items()
        if isinstance(v, dict)
    )
    return plain + tables


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML that load_config reads back to an equal TrainConfig."""
    return dict_to_toml(cfg.to_dict())
