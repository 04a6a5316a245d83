"""One input through a model, every layer on the way: what vizkit's TensorBoard tab shows while a person draws.

A computation on any nn.Module (it knows no files, no HTTP): the prediction, the class probabilities,
Grad-CAM for a class, and the output of every layer in the order the forward pass ran them. The model is
left as it was found (eval mode for the pass, each module's own mode back after, no hooks, no .grad).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vizkit.attribution import grad_cam
from vizkit.errors import first_line
from vizkit.export import Normalized
from vizkit.hooks import modes_kept
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
    cam_error: str | None = None


def _stage(module: nn.Module, previous: str) -> str:
    if isinstance(module, ACTIVATIONS):
        return "after activation"
    if isinstance(module, RAW):
        return "before activation"
    return previous  # pooling, padding, a block: as the values that went in


@contextmanager
def _every_call(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """Each module call's output in the order they ran: (name, the output, a copy of it). The output itself is
    held so no later tensor can reuse its id; a copy, because an in-place ReLU would rewrite the conv output it
    was handed; a list, because a module called twice (one `self.pool` used twice) has two. Hooks removed."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = []

    def hook_for(name: str):  # noqa: ANN202
        def keep(_module: nn.Module, _args: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                calls.append((name, out, out.detach().to("cpu", torch.float32, copy=True)))

        return keep

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def probe(
    model: nn.Module, mean: list[float], std: list[float], pixels: torch.Tensor, target: int | None = None
) -> Probe:
    """`pixels`: one input (1, C, H, W) in [0, 1]; `mean`/`std`: the normalisation the model was trained with.

    `target`: the class Grad-CAM explains (default: the predicted one); it is computed on the last Conv2d, and
    is None (with the reason in `cam_error`) where that layer gives no gradient for this input."""
    net = Normalized(model, mean, std).to(pixels.device)
    modules = dict(model.named_modules())
    with torch.no_grad(), modes_kept(model), _every_call(model) as calls:
        logits = net(pixels)
    probs = logits[0].float().softmax(0).cpu()
    layers: list[Layer] = []
    by_tensor: dict[int, Layer] = {}  # by id of the output, each held alive by `calls`
    count = Counter(name for name, _, _ in calls)
    seen: Counter[str] = Counter()
    stage = "before activation"
    for name, held, out in calls:  # in the order the forward pass ran them (containers after their children)
        seen[name] += 1
        module = modules[name]
        if out.dim() < 2 or out.shape[0] != 1 or isinstance(module, UNCHANGED):
            continue
        label = f"{name} (call {seen[name]})" if count[name] > 1 else name
        container = next(module.children(), None) is not None
        if container and id(held) in by_tensor:  # it hands on its last layer's output: one entry, two names
            by_tensor[id(held)].blocks.append(label)
            continue
        stage = _stage(module, stage)
        values = torch.nan_to_num(out[0])  # NaN or inf would not survive JSON
        layer = Layer(label, type(module).__name__, values if values.dim() in (1, 3) else values.flatten(), stage)
        layers.append(layer)
        by_tensor[id(held)] = layer
    if id(logits) in by_tensor:
        by_tensor[id(logits)].logits = True
    prediction = int(probs.argmax())
    target = prediction if target is None else int(target)
    convs = conv_layer_names(model)
    cam, cam_error = None, None
    if convs:
        try:
            cam = grad_cam(net, model, convs[-1], pixels, target).cpu()
        except (RuntimeError, KeyError) as exc:  # a frozen conv, or one the logits do not depend on
            cam_error = f"no Grad-CAM on {convs[-1]}: {first_line(exc)}"
    return Probe(probs, prediction, target, cam, convs[-1] if convs else None, layers, cam_error)
