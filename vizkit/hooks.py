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
def capture(
    model: nn.Module, names: list[str], *, eval_mode: bool = True, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers as detached CPU tensors in the dict this yields.

    `eval_mode` runs the model in eval mode (BatchNorm statistics, no dropout) for the duration.
    `detach=False` keeps the outputs in the autograd graph, on their device (for Grad-CAM and the like).
    On exit, normal or by exception, every hook is removed and the model's train/eval mode is restored.
    """
    modules = resolve_layers(model, names)
    captured: dict[str, torch.Tensor] = {}
    handles = []
    was_training = model.training

    def hook_for(name: str):  # noqa: ANN202
        def store(_module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured[name] = out.detach().cpu() if detach else out

        return store

    try:
        if eval_mode:
            model.eval()
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
