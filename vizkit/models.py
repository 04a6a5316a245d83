"""Models by name: the zoo of the tutorials (plus vizkit's accurate default), and a person's own model.

Zoo models are `nn.Sequential`s of named layers, so a person can type the names a hook needs (`conv1`,
`relu1`, `fc1`, ...). A person's own model is named `PATH.py:NAME` or `package.module:NAME`, where NAME is
an `nn.Module` class or a function returning one; its layers keep the names its author gave them. Input
channels and size come from the dataset; a zoo model's first Linear width is measured, not hand-computed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vizkit.errors import VizkitError, first_line
from vizkit.graph import first_tensor

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a model factory available to get_model(name)."""

    def add(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_user_model(name: str) -> bool:
    """True for `PATH.py:NAME` and `package.module:NAME`, False for a zoo name."""
    return ":" in name or name.endswith(".py")


def split_spec(spec: str) -> tuple[str, str]:
    """`PATH.py:NAME` or `module:NAME` -> (PATH.py or module, NAME), with one error for each malformed kind."""
    where, sep, name = spec.rpartition(":")
    if not sep:
        raise VizkitError(f"--model {spec}: name the class or function in it too, as {spec}:NAME")
    if not name.isidentifier():
        shown = f"'{name}' is not a Python name" if name else "the name after ':' is missing"
        raise VizkitError(f"--model {spec}: {shown}; give the class or function that builds the model, as FILE.py:NAME")
    if not where:
        raise VizkitError(f"--model {spec}: the file or module before ':' is missing; give FILE.py:NAME")
    return where, name


def absolute_spec(spec: str) -> str:
    """A file spec with its path made absolute (so a run can be resumed or inspected from any directory)."""
    if not is_user_model(spec):
        return spec
    where, name = split_spec(spec)
    return f"{Path(where).resolve()}:{name}" if where.endswith(".py") else spec


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


def display_name(spec: str) -> str:
    """What a run directory is named after: the zoo name, or NAME of a user spec."""
    return spec.rpartition(":")[2] if is_user_model(spec) else spec


def locate_source(spec: str) -> Path | None:
    """The file a user spec's code lives in, found without running any of it (None if it cannot be found)."""
    return locate_code(spec)[0]


def locate_code(spec: str) -> tuple[Path | None, list[Path]]:
    """The file a user spec's code lives in, and the `__init__.py` of each package importing it runs first
    (`pkg/__init__.py` for `pkg.mod:Net`), found without running any of it (None: it cannot be found)."""
    where, _ = split_spec(spec)
    if where.endswith(".py"):
        return Path(where).resolve(), []  # imported by its path: no package of it runs
    # Walk the package path the way import does, but with PathFinder, which reads directories only.
    parts, search, found, packages = where.split("."), None, None, []
    for i in range(len(parts)):
        found = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if found is None:
            return None, []
        search = found.submodule_search_locations
        if search is not None and found.origin and i < len(parts) - 1:  # a package with code of its own
            packages.append(Path(found.origin).resolve())
    return (Path(found.origin).resolve() if found is not None and found.origin else None), packages


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_user_module(where: str):  # noqa: ANN202
    """Import the module of a user spec: a file by its path (its folder importable while it loads) or a module."""
    if not where.endswith(".py"):
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise VizkitError(f"no module named '{where}'; give a file as PATH.py:NAME, or install it") from None
            raise VizkitError(f"importing {where} failed: {first_line(exc)}; install what it imports") from None
        except SystemExit:
            raise VizkitError(f"importing {where} exited (a script's top level ran)") from None
        except Exception as exc:
            raise VizkitError(f"importing {where} raised {type(exc).__name__}: {first_line(exc)}") from None
    path = Path(where).resolve()
    if not path.is_file():
        raise VizkitError(f"model file {where} does not exist; give the path of your model's .py file")
    module_name = "vizkit_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12] + "_" + path.stem
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    sys.path.insert(0, str(path.parent))  # `from my_layers import Block` beside the file keeps working
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise VizkitError(f"{where}:{exc.lineno}: syntax error ({exc.msg}); fix the file and try again") from None
    except ImportError as exc:
        del sys.modules[module_name]
        raise VizkitError(
            f"{where} could not import what it needs: {first_line(exc)}; install it or fix the import"
        ) from None
    except SystemExit:  # a script's top level ran (argparse, sys.exit)
        del sys.modules[module_name]
        raise VizkitError(
            f"{where} exited while being imported (a script's top level ran); put that part under "
            "if __name__ == '__main__':"
        ) from None
    except Exception as exc:  # the person's code raised while it was being imported
        del sys.modules[module_name]
        raise VizkitError(f"{where} raised {type(exc).__name__} while being imported: {first_line(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _build_user_model(spec: str, dims: dict[str, int], model_args: dict[str, Any], own_only: bool) -> nn.Module:
    where, name = split_spec(spec)
    module = _import_user_module(where)
    factory = getattr(module, name, None)
    is_module_class = inspect.isclass(factory) and issubclass(factory, nn.Module)
    if (
        own_only
        and factory is not None
        and not (
            getattr(factory, "__module__", None) == module.__name__ and (is_module_class or inspect.isfunction(factory))
        )
    ):
        raise VizkitError(
            f"{where}:{name} is not an nn.Module class or function defined in that file, so a checkpoint may not "
            "name it; pass --model PATH.py:NAME yourself"
        )
    if factory is None:
        models = [k for k, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)
                  and v.__module__ == module.__name__]  # fmt: skip
        hint = f"; it defines {', '.join(models)}" if models else "; it defines no nn.Module class"
        raise VizkitError(f"{where} has no '{name}'{hint}")
    if inspect.isclass(factory) and not issubclass(factory, nn.Module):
        raise VizkitError(f"{where}:{name} is a class but not a torch.nn.Module; name your model's class")
    if not callable(factory):
        raise VizkitError(f"{where}:{name} is a {type(factory).__name__}, not a class or a function; name your model")
    # Pass the dataset's shape only to the parameters that ask for it by name.
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in dims.items() if k in params and k not in model_args}
    try:
        model = factory(**kwargs, **model_args)
    except TypeError as exc:
        raise VizkitError(
            f"{where}:{name}(...) could not be called: {first_line(exc)}; "
            "give its arguments as --set model_args.KEY=VALUE (or a [model_args] table)"
        ) from None
    except Exception as exc:
        raise VizkitError(f"{where}:{name}(...) raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise VizkitError(f"{where}:{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_fits(
    model: nn.Module, name: str, in_channels: int, image_size: int | tuple[int, int], num_classes: int
) -> None:
    """One forward pass of two blank images in eval mode (nothing changes), so a mismatch is a clear error."""
    modes = {m: m.training for m in model.modules()}
    height, width = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    shape = f"{in_channels}x{height}x{width}"
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, height, width))
    except Exception as exc:
        raise VizkitError(f"model '{name}' does not take {shape} inputs: {first_line(exc)}") from None
    finally:
        for m, training in modes.items():
            m.training = training
    out = first_tensor(out, model)  # a tuple, list or dict output: its first tensor (tutorial 004's `(output, x)`)
    if tuple(out.shape) != (2, num_classes):
        raise VizkitError(
            f"model '{name}' must return logits of shape (batch, {num_classes}) for {shape} inputs; "
            f"for a batch of 2 it returned {tuple(out.shape)}"
        )


def get_model(
    name: str,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    model_args: dict[str, Any] | None = None,
    own_only: bool = False,
) -> nn.Module:
    """A freshly initialised model: a zoo name, or a person's own `PATH.py:NAME` / `module:NAME`.

    Naming a user model imports its file, which runs its code: checkpoint.py decides when that is allowed,
    and passes `own_only` for a spec that a checkpoint named (NAME must then be an nn.Module class or a
    function defined in that file). Any model that does not map (N, C, H, W) inputs to (N, classes) logits
    is an error saying so.
    """
    if is_user_model(name):
        dims = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
        model = _build_user_model(name, dims, dict(model_args or {}), own_only)
    else:
        if model_args:
            raise VizkitError(f"model_args are for your own model; zoo model '{name}' takes none")
        if name not in _REGISTRY:
            raise VizkitError(
                f"unknown model '{name}'; choose one of {', '.join(list_models())}, or your own as PATH.py:NAME"
            )
        if isinstance(image_size, tuple):
            raise VizkitError(f"zoo model '{name}' takes square inputs, not {image_size[0]}x{image_size[1]}")
        try:
            model = _REGISTRY[name](in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        except RuntimeError as exc:  # e.g. the input is too small for this many poolings
            raise VizkitError(
                f"model '{name}' does not fit {in_channels}x{image_size}x{image_size} inputs: {first_line(exc)}"
            ) from None
    _check_fits(model, display_name(name), in_channels, image_size, num_classes)
    return model


def _with_head(
    features: list[tuple[str, nn.Module]],
    head: Callable[[int], list[tuple[str, nn.Module]]],
    in_channels: int,
    image_size: int,
) -> nn.Sequential:
    # Measure the flattened feature width with a dummy input (eval mode: BatchNorm stats stay untouched).
    body = nn.Sequential(OrderedDict(features + [("flatten", nn.Flatten())]))
    body.eval()
    with torch.no_grad():
        width = body(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    model = nn.Sequential(OrderedDict(list(body.named_children()) + head(width)))
    model.train()
    return model


@register("net")
def net(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Recipe 001 (pytorch/examples' Net): conv(10,k5)-pool-relu-conv(20,k5)-pool-relu-fc50-fc10."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 10, 5)),
        ("pool1", nn.MaxPool2d(2)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(10, 20, 5)),
        ("pool2", nn.MaxPool2d(2)),
        ("relu2", nn.ReLU()),
    ]
    return _with_head(
        features,
        lambda w: [("fc1", nn.Linear(w, 50)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(50, num_classes))],
        in_channels,
        image_size,
    )


@register("fast")
def fast(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """The `fast` recipe's model (train_mnist_fast's): conv(24,k5)-pool-relu-conv(32,k3)-pool-relu-fc256-fc10."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 24, 5)),
        ("pool1", nn.MaxPool2d(2)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(24, 32, 3)),
        ("pool2", nn.MaxPool2d(2)),
        ("relu2", nn.ReLU()),
    ]
    head = lambda w: [("fc1", nn.Linear(w, 256)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(256, num_classes))]  # noqa: E731
    return _with_head(features, head, in_channels, image_size)


@register("mlp")
def mlp(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Recipe 002: MLP 784-300-100-10 with BatchNorm1d after each hidden layer (logits out, no softmax)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(in_channels * image_size * image_size, 300)),
                ("bn1", nn.BatchNorm1d(300)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(300, 100)),
                ("bn2", nn.BatchNorm1d(100)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(100, num_classes)),
            ]
        )
    )


@register("cnn")
def cnn(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Recipe 004 (and 000's conv-pool-conv-pool-fc): conv(16,k5,pad2)-relu-pool-conv(32,k5,pad2)-relu-pool-fc10."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 16, 5, padding=2)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 5, padding=2)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
    ]
    return _with_head(features, lambda w: [("fc", nn.Linear(w, num_classes))], in_channels, image_size)


@register("keras-cnn")
def keras_cnn(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Recipe 003 (the Keras tutorial): conv(32,3x3)-relu-pool-conv(64,3x3)-relu-pool-dense64-dense10."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 32, 3)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 3)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
    ]
    return _with_head(
        features,
        lambda w: [("fc1", nn.Linear(w, 64)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(64, num_classes))],
        in_channels,
        image_size,
    )


@register("lenet5")
def lenet5(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) on 28x28: C1 padded to see the 32x32 field, tanh and average pooling."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 6, 5, padding=2)),
        ("tanh1", nn.Tanh()),
        ("pool1", nn.AvgPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("tanh2", nn.Tanh()),
        ("pool2", nn.AvgPool2d(2)),
        ("conv3", nn.Conv2d(16, 120, 5)),
        ("tanh3", nn.Tanh()),
    ]
    return _with_head(
        features,
        lambda w: [("fc1", nn.Linear(w, 84)), ("tanh4", nn.Tanh()), ("fc2", nn.Linear(84, num_classes))],
        in_channels,
        image_size,
    )


@register("cnnnet")
def cnnnet(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    """Recipe 002's CNNNet for 3x32x32: conv(16,k5)-relu-pool-conv(30,k5)-relu-pool-fc10.

    The tutorial's Linear(30, 10) cannot take 30x5x5 features; the width here is measured.
    """
    features = [
        ("conv1", nn.Conv2d(in_channels, 16, 5)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 30, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
    ]
    return _with_head(features, lambda w: [("fc3", nn.Linear(w, num_classes))], in_channels, image_size)


@register("lenet")
def lenet(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
    """Recipe 002's LeNet for 3x32x32: conv(6,k5)-relu-pool-conv(16,k5)-relu-pool-fc120-fc84-fc10."""
    features = [
        ("conv1", nn.Conv2d(in_channels, 6, 5)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
    ]
    return _with_head(
        features,
        lambda w: [
            ("fc1", nn.Linear(w, 120)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(120, 84)),
            ("relu4", nn.ReLU()),
            ("fc3", nn.Linear(84, num_classes)),
        ],
        in_channels,
        image_size,
    )


@register("vizkit")
def vizkit_cnn(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """vizkit's default: three conv3x3-BatchNorm-ReLU-pool blocks, dropout, fc128-fc10; 99%+ on MNIST, cheap on CPU."""
    features: list[tuple[str, nn.Module]] = []
    channels = [in_channels, 16, 32, 64]
    for i in range(1, 4):
        features += [
            (f"conv{i}", nn.Conv2d(channels[i - 1], channels[i], 3, padding=1, bias=False)),  # BN has the bias
            (f"bn{i}", nn.BatchNorm2d(channels[i])),
            (f"relu{i}", nn.ReLU()),
            (f"pool{i}", nn.MaxPool2d(2)),
        ]
    return _with_head(
        features,
        lambda w: [
            ("drop1", nn.Dropout(0.25)),
            ("fc1", nn.Linear(w, 128)),
            ("relu4", nn.ReLU()),
            ("drop2", nn.Dropout(0.25)),
            ("fc2", nn.Linear(128, num_classes)),
        ],
        in_channels,
        image_size,
    )
