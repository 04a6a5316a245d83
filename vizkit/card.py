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
    note: str = ""  # where the chain stops early and why (a pool that leaves the unit out)


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
    bias = float(conv.bias[channel].detach()) if conv.bias is not None else 0.0  # no autograd warning per card
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
    """An activation, or a BatchNorm with running statistics, applied to one value of channel `channel`; None where
    vizkit cannot work it out from that value alone (other norms read the whole map; a call reading other steps)."""
    module = dict(model.named_modules()).get(step.module) if step.module is not None else None
    if step.kind in PASS:
        return value
    if step.kind == "norm":
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_mean is None:
            return None  # InstanceNorm, GroupNorm, LayerNorm, F.batch_norm: not from one value
        std = (module.running_var[channel].double() + module.eps).sqrt()
        scaled = (value - module.running_mean[channel].double()) / std
        if module.affine:
            scaled = scaled * module.weight[channel].double() + module.bias[channel].double()
        return float(scaled)
    x = torch.zeros(1, step.shape[0], 1, 1)
    x[0, channel] = value
    try:
        if module is not None:
            return float(module(x)[0, channel])
        node = next(n for n in graph.module.graph.nodes if n.name == graph.nodes.get(step.name))
        rest = list(node.args[1:]) + list(node.kwargs.values())
        if any(isinstance(a, torch.fx.Node) for a in rest):  # a call that reads other steps or parameters
            return None
        call = getattr(x, node.target) if node.op == "call_method" else None
        out = call(*node.args[1:], **node.kwargs) if call else node.target(x, *node.args[1:], **node.kwargs)
        return float(out[0, channel])
    except Exception:  # whatever the person's activation does with a 1x1 map: the forward value is shown alone
        return None


def _pool_options(model: nn.Module, graph: Graph, step: Step) -> dict[str, Any]:
    """A pooling step's settings, from its module or from the arguments of its F.max_pool2d / F.avg_pool2d call."""
    if step.module is not None:
        m = dict(model.named_modules()).get(step.module)
        keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override")
        return {k: getattr(m, k) for k in keys if hasattr(m, k)}
    node = next((n for n in graph.module.graph.nodes if n.name == graph.nodes.get(step.name)), None)
    if node is None:
        return {}
    avg = node.target is F.avg_pool2d
    names = ("kernel_size", "stride", "padding") + (
        ("ceil_mode", "count_include_pad", "divisor_override") if avg else ("dilation", "ceil_mode")
    )
    return {**dict(zip(names, node.args[1:], strict=False)), **node.kwargs}


def _plain(options: dict[str, Any]) -> bool:
    """A square window, no ceil_mode, and (an average) padding counted and no divisor of its own: the cases the
    card works out; other pools show the forward pass's value alone."""
    square = all(
        not isinstance(v, (tuple, list)) or len(set(v)) == 1
        for k, v in options.items()
        if k in ("kernel_size", "stride", "padding", "dilation") and v is not None
    )
    return (
        square
        and not options.get("ceil_mode")
        and options.get("count_include_pad", True) is True
        and (options.get("divisor_override") is None)
    )


def _pool(model: nn.Module, graph: Graph, step: Step, before: torch.Tensor, row: int, col: int) -> Then | str:
    """The pool's unit that (row, col) of the map before it (`before`: (H, W)) falls in, its window and value; a
    sentence where no window covers (row, col) (a 7 x 7 map under a 2 x 2 pool loses its last row)."""
    k, s, d, pad = windows(model, graph)[step.name]
    h, w = step.shape[1:]
    r, c = (row + pad) // s, (col + pad) // s
    top, left = r * s - pad, c * s - pad
    if r >= h or c >= w or row > top + d * (k - 1) or col > left + d * (k - 1) or (row - top) % d or (col - left) % d:
        return f"{step.name} ({step.op}) leaves unit ({row}, {col}) out: none of its windows covers it"
    how = "max" if "max" in step.op.lower() else "mean"
    rows, cols = [top + i * d for i in range(k)], [left + j * d for j in range(k)]
    cell = [[float(before[y, x]) if 0 <= y < before.shape[0] and 0 <= x < before.shape[1] else None for x in cols]
            for y in rows]  # fmt: skip
    grid = [[None if v is None else round(v, 6) for v in line] for line in cell]
    exact = [v for line in cell for v in line if v is not None]
    value = None  # padding only, or a pool vizkit does not work out
    if exact and _plain(_pool_options(model, graph, step)):
        value = max(exact) if how == "max" else sum(exact) / (k * k)  # padding counts as zeros
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
            if step.name not in windows(model, graph):  # adaptive pooling, LPPool: geometry vizkit does not follow
                found.note = f"{step.name} ({step.op}) follows; vizkit does not know its windows"
                break
            then = _pool(model, graph, step, out[previous][0, channel].float(), r, c)
            if isinstance(then, str):
                found.note = then
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
        "value": round(a.value, 6), "forward": round(a.forward, 6), "note": a.note,
        "then": [{"name": t.name, "kind": t.kind, "op": t.op, "row": t.row, "col": t.col, "how": t.how,
                  "value": None if t.value is None else round(t.value, 6), "forward": round(t.forward, 6),
                  "window": t.window, "from": t.rows} for t in a.then],
    }  # fmt: skip
