"""The forward graph of any nn.Module: every step of its forward pass, modules and functional calls alike.

`torch.fx.symbolic_trace` records each call of `forward` as a step with a name, a kind and the steps it reads:
`conv1` (a module keeps its path), `relu_1` (`F.relu`), `add` (`x + block(x)`), `flatten`, `log_softmax`.
`capture` records the outputs of any steps during whatever forward passes run inside it. Where a model cannot
be traced (control flow that depends on the data), its module calls are the steps, recorded by hooks, and the
log says so once. Either way the model is left as it was found: the trace is taken in eval mode with each
module's own mode restored, and the capture removes what it set in `finally`.
"""

from __future__ import annotations

import inspect
import logging
import operator
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from vizkit.errors import VizkitError, first_line
from vizkit.hooks import capture as capture_modules
from vizkit.hooks import modes_kept

log = logging.getLogger(__name__)

# kind of a module step, by class (the first match wins: LogSoftmax before the other activations)
_MODULE_KINDS: list[tuple[tuple[type, ...], str]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv"),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmax2d), "softmax"),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
      nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus), "activation"),
    ((nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
      nn.modules.pooling._AdaptiveMaxPoolNd, nn.LPPool2d), "pool"),
    ((nn.Linear, nn.Bilinear), "linear"),
    ((nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm), "norm"),
    ((nn.modules.dropout._DropoutNd,), "dropout"),
    ((nn.Flatten, nn.Unflatten), "flatten"),
    ((nn.Identity,), "identity"),
]  # fmt: skip
_FUNCTION_KINDS: dict[Any, str] = {
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), "conv"),
    **dict.fromkeys((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax), "softmax"),
    **dict.fromkeys((F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
                     F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh,
                     F.tanh), "activation"),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d),
                    "pool"),
    **dict.fromkeys((operator.add, operator.iadd, torch.add), "add"),
    **dict.fromkeys((operator.mul, operator.imul, torch.mul), "multiply"),
    **dict.fromkeys((torch.cat, torch.concat), "concat"),
    torch.flatten: "flatten",
    F.linear: "linear",
    **dict.fromkeys((F.batch_norm, F.layer_norm, F.group_norm), "norm"),
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d), "dropout"),
}  # fmt: skip
_METHOD_KINDS = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh"), "activation"),
    **dict.fromkeys(("softmax", "log_softmax"), "softmax"),
    **dict.fromkeys(("view", "reshape", "flatten"), "flatten"),
    **dict.fromkeys(("add", "add_"), "add"),
    "mul": "multiply",
}
# Steps that show the values of the step before them again (in eval mode), or only reshape them: listed, not drawn.
UNCHANGED = ("dropout", "identity", "flatten")


@dataclass(frozen=True)
class Step:
    """One call in the forward pass and its output for one input."""

    name: str  # a module's path (`conv1`, `layers.0.conv`), or fx's name for a call (`relu_1`, `add`, `flatten`)
    kind: str  # conv, activation, pool, add, norm, linear, softmax, flatten, dropout, ... or "other"
    op: str  # what was called: Conv2d, F.relu, x.view, +, ...
    inputs: tuple[str, ...]  # the steps it reads ("input": the model's input)
    shape: tuple[int, ...]  # its output's shape for one input, batch left out
    module: str | None = None  # the module it calls, if any
    blocks: tuple[str, ...] = ()  # the containers whose output this step's output is too (conv1 = Sequential)

    @property
    def maps(self) -> bool:
        """Channels of maps (C, H, W): what a conv, an activation, a pool or an addition gives a CNN."""
        return len(self.shape) == 3


@dataclass
class Graph:
    """A model's forward graph: its steps in the order they run, and the one its output comes from."""

    steps: list[Step]
    output: str | None  # the step the model's output (its first tensor) is
    traced: bool  # False: the steps are module calls, seen by hooks (the model could not be traced)
    note: str = ""  # why it could not be traced
    module: torch.fx.GraphModule | None = field(default=None, repr=False)
    nodes: dict[str, str] = field(default_factory=dict, repr=False)  # step name -> fx node name
    called: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # path -> the module the graph calls
    aliases: dict[str, str] = field(default_factory=dict, repr=False)  # container path -> the step it ends with

    def names(self, *kinds: str) -> list[str]:
        return [s.name for s in self.steps if not kinds or s.kind in kinds]

    def maps(self, *kinds: str) -> list[str]:
        """The steps of these kinds whose output is channels of maps: `maps("conv")`, `maps("conv", "add")`."""
        return [s.name for s in self.steps if s.kind in kinds and s.maps]

    def relus(self) -> list[str]:
        """Every ReLU, module (nn.ReLU) or functional (F.relu, torch.relu, x.relu()): where units can be dead."""
        return [s.name for s in self.steps if s.op.lower().rsplit(".", 1)[-1] in ("relu", "relu_", "relu6")]

    def resolve(self, name: str) -> Step:
        """A step by its name, or by the path of a module (a container's path names its last step)."""
        step = self.by_name.get(self.aliases.get(name, name))
        if step is None:
            raise VizkitError(f"no layer named '{name}'; layers: {', '.join(self.names())}")
        return step

    @cached_property
    def by_name(self) -> dict[str, Step]:
        return {s.name: s for s in self.steps}

    @property
    def drawn(self) -> list[Step]:
        """The steps a picture of the model shows: all but those that repeat or only reshape their input."""
        return [s for s in self.steps if s.kind not in UNCHANGED]

    @property
    def output_kind(self) -> str:
        """What the model returns: "logits", or "log-probabilities" / "probabilities" (a final (log_)softmax)."""
        step = self.by_name.get(self.output or "")
        if step is None or step.kind != "softmax":
            return "logits"
        return "log-probabilities" if "log" in step.op.lower() else "probabilities"

    def cam_step(self) -> str | None:
        """Grad-CAM's default layer: the last conv step's activation (the conv, then any norm, dropout, pooling or
        residual addition, then the activation: the rectified maps of Selvaraju et al., a block's output in
        pytorch-grad-cam's examples); the conv itself where no activation follows; None if there is no conv."""
        convs = [s for s in self.steps if s.kind == "conv" and s.maps]
        if not convs:
            return None
        chosen = convs[-1]
        readers = {s.name: [r for r in self.steps if s.name in r.inputs] for s in self.steps}
        current = chosen
        while len(readers[current.name]) == 1:
            nxt = readers[current.name][0]
            if nxt.kind not in ("norm", "dropout", "identity", "pool", "add", "activation") or not nxt.maps:
                break
            current = nxt
            if nxt.kind == "activation":
                return nxt.name
        return chosen.name


def probabilities(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Class probabilities from a model's output, whichever of logits, log-probabilities or probabilities it is."""
    output = output.float()
    if kind == "probabilities":
        return output
    if kind == "log-probabilities":
        return output.exp()
    return output.softmax(-1)


def loss(output: torch.Tensor, target: torch.Tensor, kind: str, reduction: str = "mean") -> torch.Tensor:
    """The cross-entropy of a model's output, whatever it holds: F.cross_entropy of logits (and of
    log-probabilities, which log_softmax leaves as they are), the NLL of the log of probabilities."""
    if kind == "probabilities":
        return F.nll_loss(output.float().clamp_min(1e-12).log(), target, reduction=reduction)
    return F.cross_entropy(output, target, reduction=reduction)


_told: set[type] = set()


def first_tensor(output: Any, model: nn.Module | None = None) -> torch.Tensor:
    """The model's output, or the first tensor of a tuple, list or dict it returns (tutorial 004's CNN returns
    `(output, x)` and its loop takes `cnn(x)[0]`); said once per model class in the log."""
    if isinstance(output, torch.Tensor):
        return output
    values = list(output.values()) if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            owner = type(model) if model is not None else type(output)
            if owner not in _told:
                _told.add(owner)
                log.info(
                    "%s returns a %s; vizkit uses its first tensor as the output",
                    owner.__name__,
                    type(output).__name__,
                )
            return value
    raise VizkitError(f"the model returned a {type(output).__name__} with no tensor in it; return the logits")


# --- building the graph ------------------------------------------------------------------------------------

_graphs: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], Graph]] = weakref.WeakKeyDictionary()


def forward_graph(model: nn.Module, input_shape: list[int] | tuple[int, ...]) -> Graph:
    """The model's forward graph, with each step's output shape for one (C, H, W) input; made once per model
    (again if a submodule was replaced since: the traced graph calls the submodules it was traced with)."""
    shape = tuple(int(v) for v in input_shape)
    kept = _graphs.setdefault(model, {})
    if shape in kept and not _current(kept[shape], model):
        kept.clear()
    if shape not in kept:
        module, note = None, ""
        try:
            if "forward" in vars(model):  # fx traces the class's forward: this model runs another one
                raise TypeError("its forward is set on the instance")
            # in eval mode (`if self.training` and F.dropout(training=...) as inspected), and with every
            # attribute back as it was: tracing runs forward, which may set `self.x = ...` or count calls
            with modes_kept(model), _attributes_kept(model):
                module = torch.fx.symbolic_trace(model)
        except Exception as exc:  # data-dependent control flow, or a call fx cannot follow
            note = f"{type(model).__name__} could not be traced ({first_line(exc, 120)})"
            log.warning("%s; vizkit shows its modules only, not its functional steps", note)
        try:
            kept[shape] = _traced(model, module, shape) if module is not None else _hooked(model, shape, note)
        except Exception as exc:
            size = "x".join(map(str, shape))
            raise VizkitError(f"{type(model).__name__} does not take {size} inputs: {first_line(exc)}") from None
    return kept[shape]


@contextmanager
def _attributes_kept(model: nn.Module) -> Iterator[None]:
    """Every module's plain attributes as they were before (what forward set, while traced, comes off again)."""
    saved = {m: dict(vars(m)) for m in model.modules()}
    try:
        yield
    finally:
        for m, attributes in saved.items():
            for key in [k for k in vars(m) if k not in attributes]:
                delattr(m, key)
            for key, value in attributes.items():
                if vars(m).get(key) is not value:
                    setattr(m, key, value)


def _current(graph: Graph, model: nn.Module) -> bool:
    """Whether the traced graph still calls the model's own submodules (fx puts empty stand-ins where their
    containers were, so only the modules it calls are compared)."""
    if graph.module is None:
        return True
    own = dict(model.named_modules())
    return all(own.get(path) is module for path, module in graph.called.items())


def _op_and_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[str, str]:
    if node.op == "call_module":
        module = modules[node.target]
        kind = next((k for types, k in _MODULE_KINDS if isinstance(module, types)), "other")
        return type(module).__name__, kind
    if node.op == "call_method":
        return f"x.{node.target}", _METHOD_KINDS.get(node.target, "other")
    target = node.target
    name = getattr(target, "__name__", str(target))
    shown = {operator.add: "+", operator.iadd: "+=", operator.mul: "*", operator.getitem: "[]"}.get(target)
    if shown is None:
        prefix = "F." if getattr(target, "__module__", "") == "torch.nn.functional" else "torch."
        shown = prefix + name if callable(target) and prefix else name
    return shown, _FUNCTION_KINDS.get(target, "other")


def _traced(model: nn.Module, module: torch.fx.GraphModule, shape: tuple[int, ...]) -> Graph:
    with modes_kept(model):
        shapes = _run_shapes(module, shape)
    modules = dict(model.named_modules())
    nodes = [n for n in module.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    names = _step_names(nodes, modules)
    names.update({n.name: "input" for n in module.graph.nodes if n.op == "placeholder"})
    last_in: dict[str, str] = {}  # container path -> the last node run inside it
    for node in nodes:
        for path in node.meta.get("nn_module_stack") or {}:
            last_in[path] = node.name
    steps = []
    for node in [n for n in nodes if n.name in shapes]:  # not x.size(0), a shape or a tuple: no tensor
        op, kind = _op_and_kind(node, modules)
        own = node.target if node.op == "call_module" else None
        blocks = tuple(p for p, last in last_in.items() if last == node.name and p != own and p)
        inputs = tuple(names[a.name] for a in node.all_input_nodes if a.op == "placeholder" or a.name in shapes)
        steps.append(Step(names[node.name], kind, op, inputs, shapes[node.name], own, blocks))
    output_node = next(n for n in module.graph.nodes if n.op == "output")
    first = _first_node(output_node.args[0])
    drawn = {n.name: names[n.name] for n in nodes if n.name in shapes}  # fx node -> step
    # a container's path names the step it ends with (tutorial 004's `conv1` = its MaxPool2d)
    aliases = {p: drawn[last] for p, last in last_in.items() if p and p not in drawn.values() and last in drawn}
    return Graph(
        steps,
        drawn.get(first.name) if first is not None else None,
        True,
        module=module,
        nodes={step: node for node, step in drawn.items()},
        aliases=aliases,
        called={n.target: modules[n.target] for n in nodes if n.op == "call_module"},
    )


def _step_names(nodes: list[torch.fx.Node], modules: dict[str, nn.Module]) -> dict[str, str]:
    """fx node name -> step name: a module keeps its path (`pool`; its second call `pool_1`, as fx counts calls
    of a function), a function call fx's name (`relu_1`), and no name is the path of another module."""
    names: dict[str, str] = {}
    used: set[str] = set()
    calls: dict[str, int] = {}
    for node in nodes:
        path = node.target if node.op == "call_module" else None
        if path is not None:
            calls[path] = calls.get(path, -1) + 1
        name = node.name if path is None else path if not calls[path] else f"{path}_{calls[path]}"
        while name != path and (name in used or name in modules):
            name += "_"
        used.add(name)
        names[node.name] = name
    return names


def _first_node(value: Any) -> torch.fx.Node | None:
    if isinstance(value, torch.fx.Node):
        return value
    values = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else []
    return next((n for n in map(_first_node, values) if n is not None), None)


class _Recorder(torch.fx.Interpreter):
    """Runs a traced graph node by node, handing chosen nodes' outputs (or first inputs) to `keep`."""

    def __init__(self, module: torch.fx.GraphModule, wanted: dict[str, list[str]], inputs: bool, keep) -> None:  # noqa: ANN001
        super().__init__(module)
        self.wanted, self.inputs, self.keep = wanted, inputs, keep

    def run_node(self, n: torch.fx.Node) -> Any:
        names = self.wanted.get(n.name, ())
        if names and self.inputs:
            args, _ = self.fetch_args_kwargs_from_env(n)
            for name in names:
                self.keep(name, args[0])
        result = super().run_node(n)
        if names and not self.inputs:
            for name in names:
                self.keep(name, result)
        return result


def _run_shapes(module: torch.fx.GraphModule, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each node's output shape (batch left out) for one zero input; nodes that give no tensor are left out."""
    shapes: dict[str, tuple[int, ...]] = {}

    class Shapes(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if isinstance(result, torch.Tensor) and result.dim() >= 1:
                shapes[n.name] = tuple(result.shape[1:])
            return result

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        Shapes(module).run(torch.zeros(1, *shape, device=device))
    return shapes


def _hooked(model: nn.Module, shape: tuple[int, ...], note: str) -> Graph:
    """The fallback: every leaf module call, in the order the forward pass ran them (hooks, then removed)."""
    modules = dict(model.named_modules())
    leaves = [n for n, m in modules.items() if n and next(m.children(), None) is None]
    order: list[str] = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad(), capture_modules(model, leaves) as out:
        handles = [modules[n].register_forward_hook(lambda *_a, n=n: order.append(n)) for n in leaves]
        try:
            model(torch.zeros(1, *shape, device=device))
        finally:
            for handle in handles:
                handle.remove()
    steps, previous = [], "input"
    for name in dict.fromkeys(order):
        if name not in out or out[name].dim() < 1:
            continue
        module = modules[name]
        kind = next((k for types, k in _MODULE_KINDS if isinstance(module, types)), "other")
        steps.append(Step(name, kind, type(module).__name__, (previous,), tuple(out[name].shape[1:]), name))
        previous = name
    return Graph(steps, order[-1] if order and order[-1] in {s.name for s in steps} else None, False, note)


# --- recording steps ---------------------------------------------------------------------------------------


@contextmanager
def capture(
    model: nn.Module,
    names: list[str],
    input_shape: list[int] | tuple[int, ...],
    *,
    detach: bool = True,
    inputs: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named steps (or, `inputs=True`, what goes into them) during the forward passes
    run inside, in eval mode, into the dict this yields: detached CPU copies, or (`detach=False`) the tensors
    themselves, in the autograd graph, for Grad-CAM.

    For a traced model, its `forward` is, for the duration, the traced graph run step by step (the same
    submodules and weights): the only way to see a functional call's output. What forward does besides
    computing (setting attributes, hooks on its containers) does not happen meanwhile. On exit, normal or by
    exception, `forward` is the model's own again and each module's train/eval mode is as it was. A model that
    could not be traced is seen through its modules' hooks, and a module called twice gives its last call."""
    graph = forward_graph(model, input_shape)
    steps = {n: graph.resolve(n) for n in names}
    if not graph.traced or not steps:  # nothing asked for: the model's own forward, untouched
        with capture_modules(model, list(steps), detach=detach, inputs=inputs) as out:
            yield out
        return
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            # a copy: an in-place ReLU after a conv would otherwise rewrite the conv output kept here
            captured[name] = value.detach().to("cpu", copy=True) if detach else value

    wanted: dict[str, list[str]] = {}  # fx node -> the names asked for it (`conv1` and `conv1.2` may be one step)
    for name, step in steps.items():
        wanted.setdefault(graph.nodes[step.name], []).append(name)
    recorder = _Recorder(graph.module, wanted, inputs, keep)
    signature = inspect.signature(type(model).forward)

    def traced(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(model, *args, **kwargs)  # keyword arguments in the order of forward's parameters
        return recorder.run(*list(bound.arguments.values())[1:])

    # eval mode: the graph was traced in it (in train mode it would show dropout switched off)
    with modes_kept(model):
        model.forward = traced  # a traced model has no forward of its own on the instance (forward_graph)
        try:
            yield captured
        finally:
            del model.forward


@torch.no_grad()
def step_outputs(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named steps' outputs for one batch (eval mode, on the CPU): what feature maps are drawn from."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with capture(model, names, tuple(batch.shape[1:])) as out:
        model(batch.to(device))
    return {n: out[n] for n in names if n in out}
