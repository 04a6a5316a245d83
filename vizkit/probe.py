"""One input through a model, every layer on the way: what vizkit's TensorBoard tab shows while a person draws.

A computation on any nn.Module (it knows no files, no HTTP): the prediction, the class probabilities,
Grad-CAM for a class, and the output of every layer in the order the forward pass ran them. The model is
left as it was found (eval mode for the pass, each module's own mode back after, no hooks, no .grad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vizkit.attribution import grad_cam
from vizkit.export import Normalized
from vizkit.hooks import capture
from vizkit.models import conv_layer_names

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
RAW = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Bilinear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
       nn.LayerNorm)  # fmt: skip  # a weighted sum (or its normalisation): the values before any activation
UNCHANGED = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten,
             nn.Unflatten)  # fmt: skip  # in eval mode these show the previous layer's values again: left out


@dataclass
class Layer:
    """One layer's output for the input: (C, H, W) maps or (N,) units."""

    name: str
    kind: str  # the module's class: Conv2d, ReLU, Sequential, ...
    values: torch.Tensor
    stage: str  # "before activation" or "after activation"
    blocks: list[str] = field(default_factory=list)  # the containers whose output this is too (conv1 = Sequential)
    logits: bool = False  # the model's output: one bar per class


@dataclass
class Probe:
    probs: torch.Tensor  # (K,)
    prediction: int
    target: int  # the class Grad-CAM explains
    cam: torch.Tensor | None  # (H, W) in [0, 1], or None for a model without a conv layer
    cam_layer: str | None
    layers: list[Layer]


def _stage(module: nn.Module, previous: str) -> str:
    if isinstance(module, ACTIVATIONS):
        return "after activation"
    if isinstance(module, RAW):
        return "before activation"
    return previous  # pooling, padding, a block: as the values that went in


def probe(
    model: nn.Module, mean: list[float], std: list[float], pixels: torch.Tensor, target: int | None = None
) -> Probe:
    """`pixels`: one input (1, C, H, W) in [0, 1]; `mean`/`std`: the normalisation the model was trained with.

    `target`: the class Grad-CAM explains (default: the predicted one); it is computed on the last Conv2d."""
    net = Normalized(model, mean, std).to(pixels.device)
    modules = dict(model.named_modules())
    names = [name for name in modules if name]
    with torch.no_grad(), capture(model, names, detach=False) as seen:  # detach=False: the very tensors, to compare
        logits = net(pixels)
    probs = logits[0].float().softmax(0).cpu()
    layers: list[Layer] = []
    by_tensor: dict[int, Layer] = {}
    stage = "before activation"
    for name, out in seen.items():  # in the order the forward pass ran them (containers after their children)
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 1:
            continue
        module = modules[name]
        if isinstance(module, UNCHANGED):
            continue
        if id(out) in by_tensor:  # a container that hands on its last layer's output: one entry, two names
            by_tensor[id(out)].blocks.append(name)
            continue
        stage = _stage(module, stage)
        values = out[0].detach().float().cpu()
        layer = Layer(name, type(module).__name__, values if values.dim() in (1, 3) else values.flatten(), stage)
        layers.append(layer)
        by_tensor[id(out)] = layer
    if id(logits) in by_tensor:
        by_tensor[id(logits)].logits = True
    prediction = int(probs.argmax())
    target = prediction if target is None else int(target)
    convs = conv_layer_names(model)
    cam = grad_cam(net, model, convs[-1], pixels, target).cpu() if convs else None
    return Probe(probs, prediction, target, cam, convs[-1] if convs else None, layers)
