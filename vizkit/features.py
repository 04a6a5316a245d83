"""python -m vizkit.features: what a layer of a trained model responds to, for a test image or your own photo.

python -m vizkit.features --layer conv1                 # newest run, test image 0
python -m vizkit.features --layer relu_1                # any step of forward: F.relu, pooling, x + y, ...
python -m vizkit.features --layer all --image digit.jpg
python -m vizkit.features --layer conv1 --weights       # the kernels instead
python -m vizkit.features --list-layers                 # every step: kind, shape, parameters, FLOPs, receptive field
python -m vizkit.features --list-layers --json          # the same, for scripts
python -m vizkit.features --layer conv2 --examples 8    # each channel's strongest and weakest test images
python -m vizkit.features --layer conv1 --epoch 1       # drawn from the weights after epoch 1
python -m vizkit.features --checkpoint cnn.pth --model my_cnn.py:CNN --layer conv1.0   # your own model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from vizkit import rundir
from vizkit.attribution import optimize_inputs
from vizkit.checkpoint import normalisation_note
from vizkit.cli import run_cli
from vizkit.errors import VizkitError
from vizkit.files import write_output
from vizkit.graph import Graph, Step, capture, forward_graph, probabilities
from vizkit.inputs import Sample, add_input_args, add_model_args, load_model, load_sample, test_images
from vizkit.normalize import Normalized
from vizkit.plots import activation_figure, kernels_figure, save_figure, tiles_figure
from vizkit.tiles import examples_image
from vizkit.units import Layer, as_json, dataset_examples, model_map, receptive_fields


def format_steps(graph: Graph, rows: list[Layer]) -> str:
    """--list-layers: a line per step of the forward graph, in the order it runs, with its parameters, FLOPs and
    receptive field (units.model_map)."""
    header = ("step", "kind", "calls", "output", "params", "FLOPs", "RF", "from")
    table = [header] + [
        (r.name, r.kind, r.op, " x ".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.flops:,}",
         str(r.receptive_field or "-"), ", ".join(r.inputs))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(7)]

    def cell(i: int, value: str) -> str:
        return f"{value:>{widths[i]}}" if i in (4, 5, 6) else f"{value:<{widths[i]}}"  # numbers to the right

    lines = ["  ".join(cell(i, v) for i, v in enumerate(r[:7])) + "  " + r[7] for r in table]
    lines.append(f"total: {sum(r.params for r in rows):,} parameters, {sum(r.flops for r in rows):,} FLOPs for one "
                 "input (torch.utils.flop_counter); RF: the side in input pixels one unit sees")  # fmt: skip
    if not graph.traced:
        lines.append(f"({graph.note}: its modules only)")
    return "\n".join(line.rstrip() for line in lines)


def conv_module(model: nn.Module, graph: Graph, name: str, purpose: str) -> nn.Conv2d:
    """The Conv2d a step calls; else one error that says what needs one and lists the conv steps."""
    modules = dict(model.named_modules())
    module = modules.get(graph.resolve(name).module or "")
    if not isinstance(module, nn.Conv2d):
        convs = [s.name for s in graph.steps if isinstance(modules.get(s.module or ""), nn.Conv2d)]
        choice = f"conv layers: {', '.join(convs)}" if convs else "this model has none"
        raise VizkitError(f"{purpose} needs a conv layer and '{name}' is not one; {choice}")
    return module


def describe(prediction: torch.Tensor, kind: str, classes: list[str], sample: Sample) -> str:
    probs = probabilities(prediction, kind)[0]
    best = int(probs.argmax())
    truth = f" (label {classes[sample.label]})" if sample.label is not None else ""
    return f"{sample.name}{truth}: predicted {classes[best]} ({100 * float(probs[best]):.1f}%)"


def output_paths(out: str | None, default_dir: Path, names: list[str]) -> list[Path]:
    """--out FILE.png for one figure, --out DIR for several; default: features/ inside the run directory."""
    if out and out.lower().endswith(".png"):
        if len(names) > 1:
            raise VizkitError(f"--out {out} names one file but {len(names)} figures are drawn; give a directory")
        return [Path(out)]
    folder = Path(out) if out else default_dir
    return [folder / f"{n}.png" for n in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.features", description=__doc__.split("\n")[0])
    add_model_args(p)
    add_input_args(p)
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        help="layer name as the model names it (repeatable; see --list-layers), or 'all' "
        "(default: the first conv layer)",
    )
    p.add_argument(
        "--list-layers",
        action="store_true",
        help="print every step: name, kind, what it calls, output shape, parameters, FLOPs, receptive field",
    )
    p.add_argument(
        "--examples",
        type=int,
        metavar="K",
        help="the K test images that drive each channel hardest (cropped to what its strongest unit sees) and least",
    )
    p.add_argument("--json", action="store_true", help="with --list-layers or --examples: JSON, for scripts")
    p.add_argument("--weights", action="store_true", help="draw the layer's conv kernels instead of its activations")
    p.add_argument(
        "--optimize", action="store_true", help="synthesise, per channel, the input that excites it most (from noise)"
    )
    p.add_argument("--out", help="output .png (one layer) or directory (default: <run>/features/<layer>-<input>.png)")
    p.add_argument("--tensorboard", action="store_true", help="also add the figures to the run's TensorBoard log")
    return p


def examples(args: argparse.Namespace, model: nn.Module, ckpt: dict, checkpoint: Path, steps: dict[str, Step]) -> None:
    """--examples K: for each channel (or unit) of the steps, the test images that drive it hardest, cropped to
    what its strongest unit sees, and least; its optimised input beside them. --json: the indices and values."""
    if not 1 <= args.examples <= 64:
        raise VizkitError(f"--examples {args.examples}: give 1 to 64 images per channel")
    shape = ckpt["input_shape"]
    test = test_images(ckpt, checkpoint, args.data_dir)
    found = {n: dataset_examples(model, s.name, test.images, ckpt["mean"], ckpt["std"], args.examples)
             for n, s in steps.items()}  # fmt: skip
    if args.json:
        shown = [{**ex.as_json(), "layer": name} for name, ex in found.items()]
        print(json.dumps(shown[0] if len(shown) == 1 else shown))
        return
    fields = receptive_fields(model, forward_graph(model, shape), shape)
    net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
    at = f"-epoch-{args.epoch}" if args.epoch is not None else ""
    paths = output_paths(args.out, rundir.run_of(checkpoint) / "features", [f"{n}-examples{at}" for n in found])
    for path, (name, ex) in zip(paths, found.items(), strict=True):
        step, field = steps[name], fields[steps[name].name]
        boxes = None
        if ex.where is not None:
            boxes = [[field.box(int(r), int(c)) for r, c in ex.where[ch]] for ch in range(len(ex.top))]
        optimised = optimize_inputs(net, model, step.name, shape) if step.maps else None
        title = (f"{name} ({step.op}): each channel's strongest and weakest of the {len(test.images)} images of "
                 f"{test.what}, by its maximum; a unit sees {field.size} x {field.size} px")  # fmt: skip
        picture = examples_image(test.images, ex.top, ex.bottom, boxes, optimised, title)
        print(write_output(path, lambda tmp, picture=picture: Image.fromarray(picture).save(tmp, format="png")))


def to_tensorboard(run_dir: Path, figures: dict) -> None:
    """--tensorboard: the figures into the run's own event log, through the writer, under the run's lock (not
    while training writes it)."""
    from vizkit.writer import Writer

    if not rundir.is_finished(run_dir):  # --resume cuts a run's logs back to its last epoch: these would go
        raise VizkitError(f"{run_dir} has not finished training; --tensorboard adds to finished runs only")
    rundir.lock(run_dir)
    try:
        writer = Writer(run_dir)
        try:
            for name, fig in figures.items():
                writer.figure(f"features/{name}", fig, 0)
        finally:
            writer.close()
    finally:
        rundir.release(run_dir)
    print(f"added {len(figures)} figure(s) to the TensorBoard log in {run_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        model, ckpt, ckpt_path = load_model(args)
        graph = forward_graph(model, ckpt["input_shape"])
        if args.list_layers:
            rows = model_map(model, ckpt["input_shape"])
            steps = ",\n ".join(json.dumps(r) for r in as_json(rows))  # a step a line
            print(f"[{steps}]" if args.json else format_steps(graph, rows))
            return 0
        convs = graph.maps("conv")
        if not args.layer and not convs:
            raise VizkitError(
                "this model has no conv layer to show by default; name one with --layer (see --list-layers)"
            )
        wanted = args.layer or convs[:1]
        # a module's path names its step (a container's, its last one): figures are named by what was asked
        layers = [s.name for s in graph.drawn] if "all" in wanted else list(dict.fromkeys(wanted))
        steps = {name: graph.resolve(name) for name in layers}
        run_dir = rundir.run_of(ckpt_path)
        if args.examples is not None:
            examples(args, model, ckpt, ckpt_path, steps)
            return 0
        figures = {}
        if args.optimize:
            net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
            for name, step in steps.items():
                if not step.maps:
                    raise VizkitError(f"--optimize needs a step with channels of maps and '{name}' gives "
                                      f"{' x '.join(map(str, step.shape))}; see --list-layers")  # fmt: skip
                inputs = optimize_inputs(net, model, step.name, ckpt["input_shape"])
                title = f"{name}: for each channel, the input that excites it most (gradient ascent from noise)"
                figures[f"{name}-optimized"] = tiles_figure(inputs, title)
        elif args.weights:
            for name in steps:
                figures[f"{name}-weights"] = kernels_figure(conv_module(model, graph, name, "--weights").weight, name)
        else:
            sample = load_sample(args, ckpt, ckpt_path)
            with torch.no_grad(), capture(model, layers, ckpt["input_shape"]) as acts:
                output = Normalized(model, ckpt["mean"], ckpt["std"])(sample.pixels)
            title = describe(output, graph.output_kind, ckpt["classes"], sample) + "; " + normalisation_note(ckpt)
            for name, step in steps.items():
                label = f"{name} ({step.op}{', from ' + ' + '.join(step.inputs) if step.inputs else ''})"
                classes = ckpt["classes"] if step.name == graph.output else None
                figures[f"{name}-{sample.name}"] = activation_figure(acts[name][0], label, sample.pixels[0], title,
                                                                     classes)  # fmt: skip
        at = f"-epoch-{args.epoch}" if args.epoch is not None else ""  # beside the best weights' figures, not over them
        paths = output_paths(args.out, run_dir / "features", [name + at for name in figures])
        for path, fig in zip(paths, figures.values(), strict=True):
            print(save_figure(fig, path))
        if args.tensorboard:
            to_tensorboard(run_dir, figures)
        return 0

    return run_cli(body, "vizkit.features")


if __name__ == "__main__":
    sys.exit(main())
