"""What a channel's card in the tab computes: its kernels, the arithmetic of the unit under the pointer (card.py),
where that unit looks in the input, and the channel's top dataset examples and optimised input, ready as JSON.

Imported with live.py on the tab's first request for a model (it imports torch).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vizkit.card import arithmetic, as_json, conv_of, kernels, source_conv
from vizkit.errors import VizkitError
from vizkit.graph import Graph, Step, forward_graph, step_outputs
from vizkit.normalize import Normalized
from vizkit.tensorboard_plugin.live import MODELS, Loaded, _bytes, input_json, test_set, the_input
from vizkit.tiles import to_levels
from vizkit.units import Examples, examples_of, receptive_fields

EXAMPLES = 8  # top dataset examples on a card


def _number(request: dict[str, Any], key: str, below: int, what: str) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < below:
        raise VizkitError(f"{what} {value!r} is out of range: 0 to {below - 1}")
    return value


def _step(loaded: Loaded, request: dict[str, Any]) -> tuple[Graph, Step, int]:
    """The step and channel a card is for, checked: a step of the model with channels of maps."""
    graph = forward_graph(loaded.model, loaded.ckpt["input_shape"])
    step = graph.resolve(str(request.get("layer", "")))
    if not step.maps:
        raise VizkitError(f"{step.name} gives {len(step.shape)}-d values, not channels of maps: no card for it")
    channel = _number(request, "channel", step.shape[0], f"channel of {step.name}")
    return graph, step, 0 if channel is None else channel


def _kernels(loaded: Loaded, graph: Graph, conv: Step, channel: int) -> dict[str, Any]:
    module = conv_of(loaded.model, graph, conv)
    weight, bias, inputs = kernels(module, channel)
    values = [[round(float(v), 5) for v in k.flatten()] for k in weight]
    scale = float(weight.abs().max())
    return {
        "inputs": inputs,
        "shape": list(weight.shape[-2:]),
        "bias": round(bias, 6) if module.bias is not None else None,  # a conv before a norm often has none
        "scale": scale,
        "values": values,
    }


def card(loaded: Loaded, request: dict[str, Any]) -> dict[str, Any]:
    """One update of a card: the channel's map for the input (of the conv its channels come from, where there is
    one), the unit at `row`, `col` of it (default: the map's maximum), its receptive field on the input, the
    conv's kernels and bias, and the unit's arithmetic."""
    started = time.perf_counter()
    ckpt = loaded.ckpt
    pixels, _ = the_input(loaded, request)
    with MODELS:
        graph, step, channel = _step(loaded, request)
        conv = source_conv(graph, step.name)
        conv = conv if conv is not None and conv_of(loaded.model, graph, conv) is not None else None
        shown = conv or step  # the map the pointer moves over: the conv's, where the arithmetic starts
        x = (pixels - torch.tensor(ckpt["mean"]).view(1, -1, 1, 1)) / torch.tensor(ckpt["std"]).view(1, -1, 1, 1)
        values = step_outputs(loaded.model, [shown.name], x)[shown.name][0, channel]
        h, w = values.shape
        row, col = _number(request, "row", h, "row"), _number(request, "col", w, "column")
        if row is None or col is None:
            row, col = divmod(int(values.flatten().argmax()), w)
        field = receptive_fields(loaded.model, graph, ckpt["input_shape"]).get(shown.name)
        sums = None
        if conv is not None:
            sums = arithmetic(loaded.model, ckpt["mean"], ckpt["std"], pixels, conv.name, channel, row, col)
        kernel = _kernels(loaded, graph, conv, channel) if conv is not None else None
    levels, low, high = to_levels(values[None])
    return {
        "ok": True, "layer": step.name, "channel": channel, "row": row, "col": col, "epoch": ckpt.get("epoch"),
        "input": input_json(pixels),
        "shown": {"name": shown.name, "height": h, "width": w, "data": _bytes(levels), "min": low, "max": high},
        "field": None if field is None else {"size": field.size, "jump": field.jump, "start": field.start},
        "box": None if field is None else list(field.box(row, col)),
        "kernels": kernel, "arithmetic": None if sums is None else as_json(sums),
        "note": None if conv is not None else f"{step.name} ({step.op}) has no kernel of its own to show",
        "server_ms": round(1000 * (time.perf_counter() - started), 2),
    }  # fmt: skip


def _merged(parts: list[tuple[int, Examples]], k: int) -> Examples:
    """The examples of a whole image set from those of its slices (each with the index of its first image): the
    k strongest of all are among the k strongest of each slice."""
    top = torch.cat([ex.top + start for start, ex in parts], dim=1)
    top_values = torch.cat([ex.top_values for _, ex in parts], dim=1)
    bottom = torch.cat([ex.bottom + start for start, ex in parts], dim=1)
    bottom_values = torch.cat([ex.bottom_values for _, ex in parts], dim=1)
    values, order = top_values.topk(min(k, top_values.shape[1]), dim=1)
    low, low_order = bottom_values.topk(min(k, bottom_values.shape[1]), dim=1, largest=False)
    where = None
    if parts[0][1].where is not None:
        places = torch.cat([ex.where for _, ex in parts], dim=1)
        where = places.gather(1, order[..., None].expand(-1, -1, 2))
    return Examples(parts[0][1].layer, top.gather(1, order), values, bottom.gather(1, low_order), low, where)


SLICE = 1000  # test images a pass takes before the page's own requests get their turn


def examples(loaded: Loaded, request: dict[str, Any]) -> dict[str, Any]:
    """The channel's top dataset examples over the run's test images (each with the receptive field of its
    maximum), and its optimised input; worked out once per step and model (seconds), then kept. The test images go
    through in slices, so the page's updates are answered in between."""
    from vizkit.attribution import optimize_inputs

    started = time.perf_counter()
    ckpt = loaded.ckpt
    with MODELS:
        graph, step, channel = _step(loaded, request)
        cached = loaded.cache.get(("examples", step.name))
        if cached is None:
            field = receptive_fields(loaded.model, graph, ckpt["input_shape"]).get(step.name)
    if cached is None:
        images = test_set(loaded).images  # or the one-line reason there are none
        parts = []
        for start in range(0, len(images), SLICE):
            with MODELS:
                part = examples_of(loaded.model, [step.name], images[start : start + SLICE], ckpt["mean"],
                                   ckpt["std"], EXAMPLES)[step.name]  # fmt: skip
            parts.append((start, part))
        found = _merged(parts, EXAMPLES)
        with MODELS:
            net = Normalized(loaded.model, ckpt["mean"], ckpt["std"])
            optimised = optimize_inputs(net, loaded.model, step.name, list(ckpt["input_shape"]))
        cached = loaded.cache[("examples", step.name)] = (found, optimised, field, images)
    found, optimised, field, images = cached
    top = []
    for index, value, (row, col) in zip(found.top[channel].tolist(), found.top_values[channel].tolist(),
                                        found.where[channel].tolist(), strict=True):  # fmt: skip
        picture = images[index].permute(1, 2, 0).numpy()
        top.append({"index": index, "value": round(value, 5), "box": list(field.box(row, col)) if field else None,
                    "data": _bytes(picture)})  # fmt: skip
    mine = (optimised[channel].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return {"ok": True, "layer": step.name, "channel": channel, "epoch": ckpt.get("epoch"), "top": top,
            "optimised": _bytes(mine), "server_ms": round(1000 * (time.perf_counter() - started), 2)}  # fmt: skip
