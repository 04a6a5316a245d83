"""Per step of the forward graph: what one of its units sees of the input (its receptive field) and what the step
costs (FLOPs, as torch.utils.flop_counter counts them). Computations only: no files.

The receptive field is the side, in input pixels, of the square one unit of a step depends on: kernel sizes,
strides and dilations composed from the input (r = r_in + (k_eff - 1) * j_in, j = j_in * stride; Araujo et al.,
Distill 2019), not clipped at the image's border. A step that reads a whole map (flatten, a Linear after it,
global pooling) sees all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vizkit.graph import Graph, Step, forward_graph


@dataclass(frozen=True)
class Field:
    size: int  # side, in input pixels, of what one unit sees
    jump: int  # input pixels between two neighbouring units
    start: float = 0.0  # where the centre of unit 0 lies, in input pixels (padding moves it)

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), inclusive, in input pixels: what unit (row, col) sees (may pass the border)."""
        half = (self.size - 1) / 2
        cy, cx = self.start + row * self.jump, self.start + col * self.jump
        return round(cy - half), round(cx - half), round(cy + half), round(cx + half)


@dataclass(frozen=True)
class Layer:
    """A row of the model's map: `python -m vizkit.features --list-layers --json` prints these."""

    name: str
    kind: str
    op: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    receptive_field: int | None  # None where it cannot be worked out (a step vizkit does not know the geometry of)
    inputs: tuple[str, ...] = ()


POOLS = (F.max_pool2d, F.avg_pool2d, torch.max_pool2d)  # F.avg_pool2d's 5th argument is ceil_mode, not dilation


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _window(model_or_call: Any, args: tuple, kwargs: dict) -> tuple[int, int, int, int] | None:
    """(kernel, stride, dilation, padding) along the larger side of a conv or pooling step; None if it has none."""
    m = model_or_call
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _pair(m.kernel_size), _pair(m.stride)
        d = _pair(getattr(m, "dilation", 1))
        return max(k), max(s), max(d), _padding(m.padding, max(k), max(d))
    if m in POOLS:
        k = _pair(kwargs.get("kernel_size", args[1] if len(args) > 1 else 1))
        stride = kwargs.get("stride", args[2] if len(args) > 2 else None)
        s = _pair(stride) if stride not in (None, (), []) else k  # pooling's stride defaults to its kernel
        d = _pair(kwargs.get("dilation", args[4] if len(args) > 4 and m is not F.avg_pool2d else 1))
        pad = kwargs.get("padding", args[3] if len(args) > 3 else 0)
        return max(k), max(s), max(d), _padding(pad, max(k), max(d))
    if m in (F.conv2d, torch.conv2d):
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        k = tuple(weight.shape[-2:]) if isinstance(weight, torch.Tensor) else (1, 1)
        s = _pair(kwargs.get("stride", args[3] if len(args) > 3 else 1))
        d = _pair(kwargs.get("dilation", args[5] if len(args) > 5 else 1))
        pad = kwargs.get("padding", args[4] if len(args) > 4 else 0)
        return max(k), max(s), max(d), _padding(pad, max(k), max(d))
    return None


def _padding(value: Any, k: int, d: int) -> int:
    if value == "same":
        return d * (k - 1) // 2
    return 0 if value == "valid" else max(_pair(value))


def receptive_fields(model: nn.Module, graph: Graph, input_shape: list[int] | tuple[int, ...]) -> dict[str, Field]:
    """Each step's receptive field and jump, from the model's input (size 1, jump 1) down the graph."""
    found = windows(model, graph)
    shapes = {s.name: s.shape for s in graph.steps}
    shapes["input"] = tuple(input_shape)
    fields: dict[str, Field | None] = {"input": Field(1, 1, 0.0)}
    for step in graph.steps:
        before = [fields.get(i) for i in step.inputs if i in fields] or [fields["input"]]
        if any(f is None for f in before):  # after a step whose geometry is unknown, so is this one's
            fields[step.name] = None
            continue
        size, jump, start = max(f.size for f in before), max(f.jump for f in before), before[0].start
        source = next((shapes[i] for i in step.inputs if len(shapes.get(i, ())) == 3), None)
        window = found.get(step.name)
        if window is not None:
            k, s, d, pad = window
            start += ((d * (k - 1)) / 2 - pad) * jump
            size, jump = size + (d * (k - 1)) * jump, jump * s
        elif not step.maps or step.shape[1:] == (1, 1):  # flatten, a Linear, global pooling: the whole map it reads
            if source is not None:
                start += (max(source[1:]) - 1) / 2 * jump
                size, jump = size + (max(source[1:]) - 1) * jump, jump * max(source[1:])
        elif source is not None and step.shape[1:] != source[1:]:  # resizes maps in a way not known here
            fields[step.name] = None
            continue
        fields[step.name] = Field(size, jump, start)
    del fields["input"]
    return {name: f for name, f in fields.items() if f is not None}


def windows(model: nn.Module, graph: Graph) -> dict[str, tuple[int, int, int, int]]:
    """(kernel, stride, dilation, padding) of each conv and pooling step, by step name."""
    modules = dict(model.named_modules())
    found = {}
    fx_nodes = {n.name: n for n in graph.module.graph.nodes} if graph.module is not None else {}
    params = dict(model.named_parameters())
    for step in graph.steps:
        if step.module is not None:
            window = _window(modules.get(step.module), (), {})
        else:
            node = fx_nodes.get(graph.nodes.get(step.name, ""))
            if node is None:
                continue
            args = tuple(params.get(a.target, a) if getattr(a, "op", "") == "get_attr" else a for a in node.args)
            window = _window(node.target, args, dict(node.kwargs))
        if window is not None:
            found[step.name] = window
    return found


def step_flops(model: nn.Module, graph: Graph, input_shape: list[int] | tuple[int, ...]) -> dict[str, int]:
    """Each step's FLOPs for one input, as torch.utils.flop_counter counts them (convolutions and matrix products;
    their sum is torch's count for the whole forward pass). A model that could not be traced: per module."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_shape, device=device)
    flops: dict[str, int] = {}
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if graph.module is not None:
                names = {node: step for step, node in graph.nodes.items()}

                class Counted(torch.fx.Interpreter):
                    def run_node(self, n: torch.fx.Node) -> Any:
                        with FlopCounterMode(display=False) as counter:
                            result = super().run_node(n)
                        if n.name in names:
                            flops[names[n.name]] = counter.get_total_flops()
                        return result

                Counted(graph.module).run(x)
            else:
                with FlopCounterMode(display=False) as counter:
                    model(x)
                per_module = counter.get_flop_counts()
                prefix = type(model).__name__
                for step in graph.steps:
                    flops[step.name] = int(sum(per_module.get(f"{prefix}.{step.module}", {}).values()))
    finally:
        for m, mode in zip(model.modules(), was_training, strict=True):
            m.training = mode
    return flops


def model_map(model: nn.Module, input_shape: list[int] | tuple[int, ...]) -> list[Layer]:
    """Every step: name, kind, what it calls, output shape, parameters (a module called twice counts once),
    FLOPs and receptive field."""
    graph = forward_graph(model, input_shape)
    fields = receptive_fields(model, graph, input_shape)
    flops = step_flops(model, graph, input_shape)
    modules = dict(model.named_modules())
    counted: set[nn.Module] = set()
    rows = []
    for step in graph.steps:
        m = modules.get(step.module) if step.module is not None else None
        params = sum(p.numel() for p in m.parameters(recurse=False)) if m is not None and m not in counted else 0
        counted.add(m)
        field = fields.get(step.name)
        rows.append(Layer(step.name, step.kind, step.op, step.shape, params, flops.get(step.name, 0),
                          field.size if field else None, step.inputs))  # fmt: skip
    return rows


def format_map(rows: list[Layer]) -> str:
    """The model's map as a text table (the Text tab, the report, training's first lines)."""
    w = max([10] + [len(r.name) for r in rows])  # user models name layers `features.3.conv` and longer
    k = max([12] + [len(r.op) for r in rows])
    lines = [f"{'layer':<{w}} {'type':<{k}} {'output':<14} {'params':>9} {'FLOPs':>11} {'RF':>4}"]
    for r in rows:
        shape = "x".join(map(str, r.output_shape))
        rf = str(r.receptive_field) if r.receptive_field is not None else "-"
        lines.append(f"{r.name:<{w}} {r.op:<{k}} {shape:<14} {r.params:>9,} {r.flops:>11,} {rf:>4}")
    total_p, total_f = sum(r.params for r in rows), sum(r.flops for r in rows)
    lines.append(f"{'total':<{w}} {'':<{k}} {'':<14} {total_p:>9,} {total_f:>11,}")
    lines.append(
        "FLOPs for one input (torch.utils.flop_counter); RF: receptive field, the side in input pixels one unit sees"
    )
    return "\n".join(lines)


def as_json(rows: list[Layer]) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "kind": r.kind, "op": r.op, "output_shape": list(r.output_shape), "params": r.params,
         "flops": r.flops, "receptive_field": r.receptive_field, "inputs": list(r.inputs)}
        for r in rows
    ]  # fmt: skip


@dataclass
class Examples:
    """A step's dataset examples (Zeiler & Fergus, OpenAI Microscope): for each channel (or unit of a vector),
    the images that drive it hardest and least, by the channel's maximum over positions."""

    layer: str
    top: torch.Tensor  # (C, k) image indices, highest first
    top_values: torch.Tensor  # (C, k)
    bottom: torch.Tensor  # (C, k) image indices, lowest first
    bottom_values: torch.Tensor  # (C, k)
    where: torch.Tensor | None  # (C, k, 2): row and column of each top image's maximum in the map; None for vectors

    def as_json(self) -> dict[str, Any]:
        channels = [
            {"channel": c, "top": self.top[c].tolist(), "values": [round(float(v), 6) for v in self.top_values[c]],
             "bottom": self.bottom[c].tolist(), "bottom_values": [round(float(v), 6) for v in self.bottom_values[c]]}
            for c in range(len(self.top))
        ]  # fmt: skip
        return {"layer": self.layer, "channels": channels}


def dataset_examples(
    model: nn.Module, layer: str, images: torch.Tensor, mean: list[float], std: list[float], k: int = 8,
    batch: int = 500,
) -> Examples:  # fmt: skip
    """Over `images` (uint8, N x C x H x W, a test set), each channel of `layer`'s k strongest and k weakest
    images, in batched forward passes of the graph (eval mode; the model is left as it was)."""
    return next(iter(examples_of(model, [layer], images, mean, std, k, batch).values()))


@torch.no_grad()
def examples_of(
    model: nn.Module, layers: list[str], images: torch.Tensor, mean: list[float], std: list[float], k: int = 8,
    batch: int = 500,
) -> dict[str, Examples]:  # fmt: skip
    """dataset_examples of several steps in one pass over the images (the runner's every conv step), by step name."""
    from vizkit.graph import capture
    from vizkit.normalize import Normalized

    input_shape = list(images.shape[1:])
    graph = forward_graph(model, input_shape)
    names = list(dict.fromkeys(graph.resolve(layer).name for layer in layers))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    net = Normalized(model, mean, std).to(device)  # its mean and std where the images go
    peaks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    places: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with capture(model, names, input_shape) as out:
        for i in range(0, len(images), batch):
            net(images[i : i + batch].to(device).float() / 255)
            for name in names:
                a = out.pop(name)
                if a.dim() == 4:  # a map: the channel's maximum over positions, and where it is
                    value, place = a.flatten(2).max(2)
                    peaks[name].append(value)
                    places[name].append(place)
                else:
                    peaks[name].append(a.flatten(1))
    return {n: _ranked(n, torch.cat(peaks[n]), places[n], graph.by_name[n].shape[-1], k) for n in names}


def _ranked(name: str, values: torch.Tensor, places: list[torch.Tensor], width: int, k: int) -> Examples:
    """Examples from each image's peak per channel (N, C), and where in the map it was (for maps)."""
    k = min(k, len(values))
    top_values, top = values.topk(k, dim=0)
    low_values, low = values.topk(k, dim=0, largest=False)
    where = None
    if places:
        flat = torch.cat(places).gather(0, top)  # (k, C): the flat position of each top image's maximum
        where = torch.stack((flat // width, flat % width), dim=-1).transpose(0, 1)
    return Examples(name, top.T.contiguous(), top_values.T.contiguous(), low.T.contiguous(), low_values.T.contiguous(),
                    where)  # fmt: skip


__all__ = [
    "Examples",
    "Field",
    "Layer",
    "Step",
    "as_json",
    "dataset_examples",
    "examples_of",
    "format_map",
    "model_map",
    "receptive_fields",
    "step_flops",
]
