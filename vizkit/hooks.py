"""capture(): the activations of named layers during a forward pass, with every hook removed afterwards.

Knows nothing about training, so it works on any nn.Module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vizkit.errors import VizkitError


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule, in registration order (the root module, named '', is left out)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The modules behind `names`; an unknown name is one error that lists the valid ones."""
    modules = dict(model.named_modules())
    missing = [n for n in names if not n or n not in modules]
    if missing:
        raise VizkitError(f"no layer named {', '.join(map(repr, missing))}; layers: {', '.join(layer_names(model))}")
    return {n: modules[n] for n in names}


@contextmanager
def modes_kept(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Eval mode for the duration (if asked), then every module's own train/eval flag as it was.

    `model.train(was_training)` would not do: it sets the whole tree, so a BatchNorm frozen on purpose
    (kept in eval inside a training model) would come back in train mode.
    """
    modes = {m: m.training for m in model.modules()}
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def capture(
    model: nn.Module, names: list[str], *, eval_mode: bool = True, detach: bool = True, inputs: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers as detached CPU tensors in the dict this yields.

    `eval_mode` runs the model in eval mode (BatchNorm statistics, no dropout) for the duration.
    `detach=False` keeps the outputs in the autograd graph, on their device (for Grad-CAM and the like).
    `inputs=True` records what goes into each layer instead (the projector shows the classifier's input).
    On exit, normal or by exception, every hook is removed and each module's train/eval mode is restored.
    """
    modules = resolve_layers(model, names)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, value: torch.Tensor | tuple) -> None:
        out = value[0] if isinstance(value, (tuple, list)) else value
        # a copy: an in-place ReLU after a conv would otherwise rewrite the conv output kept here
        captured[name] = out.detach().to("cpu", copy=True) if detach else out

    def hook_for(name: str):  # noqa: ANN202
        if inputs:
            return lambda _module, args: keep(name, args)
        return lambda _module, _args, output: keep(name, output)

    with modes_kept(model, eval_mode):
        try:
            for name, module in modules.items():
                register = module.register_forward_pre_hook if inputs else module.register_forward_hook
                handles.append(register(hook_for(name)))
            yield captured
        finally:
            for handle in handles:
                handle.remove()
