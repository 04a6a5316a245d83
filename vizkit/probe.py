"""One input through a model, every step on the way: what vizkit's TensorBoard tab shows while a person draws.

A computation on any nn.Module (it knows no files, no HTTP): the prediction, the class probabilities,
Grad-CAM for a class, and the output of every step of the forward graph (graph.py: modules, F.relu, pooling,
residual additions) in the order they ran. The model is left as it was found (eval mode for the pass, each
module's own mode back after, its own forward, no .grad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vizkit.attribution import grad_cam, no_evidence
from vizkit.errors import first_line
from vizkit.graph import capture, forward_graph, probabilities
from vizkit.normalize import Normalized


@dataclass
class Layer:
    """One step's output for the input: (C, H, W) maps or (N,) units."""

    name: str
    kind: str  # conv, activation, pool, add, norm, linear, softmax, ... (graph.Step.kind)
    op: str  # what was called: Conv2d, F.relu, +, ...
    values: torch.Tensor
    inputs: list[str] = field(default_factory=list)  # the steps it reads ("input": the model's input)
    blocks: list[str] = field(default_factory=list)  # the containers whose output this is too (conv1 = Sequential)
    output: str | None = None  # for the model's output: "logits", "log-probabilities" or "probabilities"


@dataclass
class Probe:
    probs: torch.Tensor  # (K,)
    prediction: int
    target: int  # the class Grad-CAM explains
    cam: torch.Tensor | None  # (H, W) in [0, 1], or None (no conv step, or no evidence: see cam_error)
    cam_layer: str | None
    layers: list[Layer]
    cam_error: str | None = None


def probe(
    model: nn.Module,
    mean: list[float],
    std: list[float],
    pixels: torch.Tensor,
    target: int | None = None,
    classes: list[str] | None = None,
) -> Probe:
    """`pixels`: one input (1, C, H, W) in [0, 1]; `mean`/`std`: the normalisation the model was trained with.

    `target`: the class Grad-CAM explains (default: the predicted one); it is computed on the last conv step's
    activation (graph.Graph.cam_step), and is None, with the reason in `cam_error`, where that step gives no
    gradient for this input or no positive evidence for the class (named from `classes`)."""
    net = Normalized(model, mean, std).to(pixels.device)
    graph = forward_graph(model, pixels.shape[1:])
    drawn = graph.drawn
    with torch.no_grad(), capture(model, [s.name for s in drawn], pixels.shape[1:]) as out:
        output = net(pixels)
    probs = probabilities(output[0], graph.output_kind).cpu()
    layers = []
    for step in drawn:
        values = torch.nan_to_num(out[step.name][0].float())  # NaN or inf would not survive JSON
        kind = graph.output_kind if step.name == graph.output else None
        layers.append(Layer(step.name, step.kind, step.op, values if values.dim() in (1, 3) else values.flatten(),
                            list(step.inputs), list(step.blocks), kind))  # fmt: skip
    prediction = int(probs.argmax())
    target = prediction if target is None else int(target)
    layer = graph.cam_step()
    cam, cam_error = None, None
    if layer is not None:
        try:
            cam = grad_cam(net, model, layer, pixels, target).cpu()
        except (RuntimeError, KeyError) as exc:  # a frozen conv, or one the output does not depend on
            cam_error = f"no Grad-CAM on {layer}: {first_line(exc)}"
        else:
            cam_error = no_evidence(cam, layer, classes[target] if classes else str(target))
            cam = None if cam_error else cam
    return Probe(probs, prediction, target, cam, layer, layers, cam_error)
