"""A channel's card: its kernels and bias, and the arithmetic of one of its units for one input, as CNN Explainer
shows it on its own model (the input patch times the kernel, summed, plus the bias; then the activation and the
pool that follow), on any nn.Module. Computations only: no files, no HTTP (the tab's live.py serves them).

Every number is worked out here from the weights and the step's input, and set beside the forward pass's own
value for the same unit, so the card can be checked against the model (tests/test_card.py, at every pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vizkit.graph import Graph, Step, capture, forward_graph
from vizkit.hooks import modes_kept
from vizkit.normalize import Normalized
from vizkit.units import windows

FOLLOWED = ("norm", "activation", "pool", "dropout", "identity")  # what the card follows a conv through
PASS = ("dropout", "identity")  # eval mode: the value goes on as it is


@dataclass
class Term:
    """One input channel's share of a conv unit: its patch of the step's input, times the kernel, summed."""

    channel: int
    patch: torch.Tensor  # (kh, kw), zeros where the window lies in the padding
    kernel: torch.Tensor  # (kh, kw)
    total: float


@dataclass
class Then:
    """A step after the conv, at the unit the conv's unit feeds: its value worked out here and the forward pass's."""

    name: str
    kind: str
    op: str
    row: int
    col: int
    value: float | None  # None: a step whose arithmetic vizkit does not know (the forward value is shown alone)
    forward: float
    window: list[list[float]] | None = None  # a pool's input window, in the units of the step before it
    rows: tuple[int, int] | None = None  # the window's first row and column in the step before it
    how: str = ""  # "max", "mean"


@dataclass
class Arithmetic:
    conv: str
    channel: int
    row: int
    col: int
    terms: list[Term]
    bias: float
    value: float  # sum of the terms plus the bias, worked out here
    forward: float  # the forward pass's value of this unit
    then: list[Then] = field(default_factory=list)


def source_conv(graph: Graph, name: str) -> Step | None:
    """The conv a step's channels come from: the step itself, or the conv before a chain of norms, activations and
    pools that keep its channels (relu1's channel 3 is conv1's channel 3); None where there is none."""
    step = graph.resolve(name)
    while step.maps:
        if step.kind == "conv":
            return step
        if step.kind not in FOLLOWED or len(step.inputs) != 1 or step.inputs[0] not in graph.by_name:
            return None
        before = graph.by_name[step.inputs[0]]
        if not before.maps or before.shape[0] != step.shape[0]:
            return None
        step = before
    return None


def chain_after(graph: Graph, conv: Step) -> list[Step]:
    """The steps that take a conv's unit on, one reader each: norms, an activation, a pool (conv-relu-pool, or
    pytorch/examples' conv-pool-relu), up to the first step of another kind, a second pool or a second activation."""
    readers: dict[str, list[Step]] = {s.name: [] for s in graph.steps}
    for s in graph.steps:
        for i in s.inputs:
            readers.setdefault(i, []).append(s)
    chain: list[Step] = []
    current = conv
    while len(readers.get(current.name, [])) == 1:
        nxt = readers[current.name][0]
        kinds = [s.kind for s in chain]
        if nxt.kind not in FOLLOWED or not nxt.maps or nxt.kind in ("activation", "pool") and nxt.kind in kinds:
            break
        chain.append(nxt)
        current = nxt
    return chain


def conv_of(model: nn.Module, graph: Graph, step: Step) -> nn.Conv2d | None:
    """The nn.Conv2d a conv step calls (functional convs have no module to read a kernel and bias from)."""
    module = dict(model.named_modules()).get(step.module or "")
    return module if isinstance(module, nn.Conv2d) else None


def kernels(conv: nn.Conv2d, channel: int) -> tuple[torch.Tensor, float, list[int]]:
    """Output channel `channel`'s kernels (one (kh, kw) per input channel it reads), its bias, and which input
    channels those are (all of them, or its group's)."""
    per_group = conv.in_channels // conv.groups
    group = channel // (conv.out_channels // conv.groups)
    bias = float(conv.bias[channel]) if conv.bias is not None else 0.0
    return conv.weight[channel].detach().float().cpu(), bias, list(range(group * per_group, (group + 1) * per_group))


def _padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's input (C, H, W) with its padding around it, as the conv pads it."""
    pad = conv._reversed_padding_repeated_twice  # (left, right, top, bottom); the same for padding="same"
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x[None], pad, mode=mode)[0]


def conv_unit(conv: nn.Conv2d, x: torch.Tensor, channel: int, row: int, col: int) -> tuple[list[Term], float, float]:
    """Unit (row, col) of output channel `channel` for the conv's input `x` (C, H, W): the terms, the bias, and
    their sum (in float64, so the sum's own rounding is not mistaken for the model's)."""
    weight, bias, inputs = kernels(conv, channel)
    padded = _padded(conv, x.double())
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    kh, kw = weight.shape[-2:]
    top, left = row * sh, col * sw
    patches = padded[inputs, top : top + dh * (kh - 1) + 1 : dh, left : left + dw * (kw - 1) + 1 : dw]
    products = (patches * weight.double()).sum(dim=(1, 2))
    terms = [Term(c, patches[i].float(), weight[i], float(products[i])) for i, c in enumerate(inputs)]
    return terms, bias, float(products.sum()) + bias


def _elementwise(model: nn.Module, graph: Graph, step: Step, channel: int, value: float) -> float | None:
    """An activation or norm applied to one value of channel `channel` (a 1x1 map of every channel, this one set),
    by the module the step calls or the function it calls with nothing else read from the graph; else None."""
    x = torch.zeros(1, step.shape[0], 1, 1)
    x[0, channel] = value
    if step.kind in PASS:
        return value
    try:
        if step.module is not None:
            return float(dict(model.named_modules())[step.module](x)[0, channel])
        node = next(n for n in graph.module.graph.nodes if n.name == graph.nodes.get(step.name))
        rest = list(node.args[1:]) + list(node.kwargs.values())
        if any(isinstance(a, torch.fx.Node) for a in rest):  # F.batch_norm's running statistics, ...
            return None
        call = getattr(x, node.target) if node.op == "call_method" else None
        out = call(*node.args[1:], **node.kwargs) if call else node.target(x, *node.args[1:], **node.kwargs)
        return float(out[0, channel])
    except (StopIteration, AttributeError, TypeError, RuntimeError):
        return None


def _pool(model: nn.Module, graph: Graph, step: Step, before: torch.Tensor, row: int, col: int) -> Then | None:
    """The pool's unit fed by (row, col) of the map before it (`before`: (H, W)), its window and value."""
    window = windows(model, graph).get(step.name)
    if window is None:
        return None
    k, s, d, pad = window
    h, w = step.shape[1:]
    r, c = min((row + pad) // s, h - 1), min((col + pad) // s, w - 1)
    top, left = r * s - pad, c * s - pad
    padded = F.pad(before, (pad, pad, pad, pad), value=-torch.inf if "max" in step.op.lower() else 0.0)
    cells = padded[top + pad : top + pad + d * (k - 1) + 1 : d, left + pad : left + pad + d * (k - 1) + 1 : d]
    how = "max" if "max" in step.op.lower() else "mean"
    value = float(cells.max() if how == "max" else cells.double().mean())
    grid = [[round(float(v), 6) for v in line] for line in cells]
    return Then(step.name, step.kind, step.op, r, c, value, 0.0, grid, (top, left), how)


@torch.no_grad()
def arithmetic(
    model: nn.Module, mean: list[float], std: list[float], pixels: torch.Tensor, layer: str, channel: int,
    row: int, col: int,
) -> Arithmetic:  # fmt: skip
    """Unit (row, col) of `channel` of the conv `layer` (or of the conv whose channels `layer` keeps), for one input
    (`pixels`: (1, C, H, W) in [0, 1]), in eval mode: the conv's terms and bias, then the steps that take it on.
    The model is left as it was found (its modes, its forward, its BatchNorm statistics)."""
    graph = forward_graph(model, pixels.shape[1:])
    conv_step = source_conv(graph, layer)
    conv = conv_of(model, graph, conv_step) if conv_step is not None else None
    if conv is None:
        raise ValueError(f"{layer} has no nn.Conv2d of its own to show the arithmetic of")
    chain = chain_after(graph, conv_step)
    names = [conv_step.name] + [s.name for s in chain]
    net = Normalized(model, mean, std)
    with capture(model, [conv_step.name], pixels.shape[1:], inputs=True) as into:
        net(pixels)
    with capture(model, names, pixels.shape[1:]) as out:
        net(pixels)
    terms, bias, value = conv_unit(conv, into[conv_step.name][0].float(), channel, row, col)
    found = Arithmetic(
        conv_step.name, channel, row, col, terms, bias, value, float(out[conv_step.name][0, channel, row, col])
    )
    r, c, current, previous = row, col, value, conv_step.name
    with modes_kept(model):  # eval mode, as the forward pass ran: a BatchNorm uses its running statistics
        _follow(model, graph, chain, out, found, channel, r, c, current, previous)
    return found


def _follow(
    model: nn.Module, graph: Graph, chain: list[Step], out: dict[str, torch.Tensor], found: Arithmetic,
    channel: int, r: int, c: int, current: float, previous: str,
) -> None:  # fmt: skip
    """Each step after the conv at the unit it takes on: into `found.then`."""
    for step in chain:
        if step.kind == "pool":
            then = _pool(model, graph, step, out[previous][0, channel].float(), r, c)
            if then is None:
                break
            r, c = then.row, then.col
        else:
            then = Then(step.name, step.kind, step.op, r, c, _elementwise(model, graph, step, channel, current), 0.0)
        then.forward = float(out[step.name][0, channel, r, c])
        current = then.value if then.value is not None else then.forward
        previous = step.name
        found.then.append(then)


def as_json(a: Arithmetic, limit: int = 64) -> dict[str, Any]:
    """The card's arithmetic for the page: the terms largest in size first (at most `limit`), numbers rounded for
    display (the sums are of the exact values)."""
    terms = sorted(a.terms, key=lambda t: -abs(t.total))[:limit]
    r6 = lambda t: [[round(float(v), 5) for v in line] for line in t]  # noqa: E731
    return {
        "conv": a.conv, "channel": a.channel, "row": a.row, "col": a.col,
        "terms": [{"channel": t.channel, "patch": r6(t.patch), "kernel": r6(t.kernel), "total": round(t.total, 6)}
                  for t in terms],
        "inputs": len(a.terms), "sum": round(a.value - a.bias, 6), "bias": round(a.bias, 6),
        "value": round(a.value, 6), "forward": round(a.forward, 6),
        "then": [{"name": t.name, "kind": t.kind, "op": t.op, "row": t.row, "col": t.col, "how": t.how,
                  "value": None if t.value is None else round(t.value, 6), "forward": round(t.forward, 6),
                  "window": t.window, "from": t.rows} for t in a.then],
    }  # fmt: skip
