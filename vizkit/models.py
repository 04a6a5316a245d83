"""The model zoo: every model of the tutorials by name, plus vizkit's accurate default.

Each model is an `nn.Sequential` of named layers, so a person can type the names a hook needs
(`conv1`, `relu1`, `fc1`, ...) and they are the names `dict(model.named_modules())` uses.
Input channels and size come from the dataset; the first Linear's width is measured, not hand-computed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from vizkit.errors import VizkitError

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


def get_model(name: str, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model by name; an unknown name is an error that lists the known ones."""
    if name not in _REGISTRY:
        raise VizkitError(f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    try:
        return _REGISTRY[name](in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    except RuntimeError as exc:  # e.g. the input is too small for this many poolings
        raise VizkitError(
            f"model '{name}' does not fit {in_channels}x{image_size}x{image_size} inputs: {exc}"
        ) from None


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d layers, in forward order: `conv1`, `conv2`, ..."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def require_conv(model: nn.Module, name: str, purpose: str) -> nn.Conv2d:
    """The named layer if it is a Conv2d; else one error that says what needs one and lists the conv layers."""
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Conv2d):
        convs = conv_layer_names(model)
        choice = f"conv layers: {', '.join(convs)}" if convs else "this model has none"
        raise VizkitError(f"{purpose} needs a conv layer and '{name}' is not one; {choice}")
    return module


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
