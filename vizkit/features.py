"""python -m vizkit.features: what a layer of a trained model responds to, for a test image or your own photo.

python -m vizkit.features --layer conv1                 # newest run, test image 0
python -m vizkit.features --layer all --image digit.jpg
python -m vizkit.features --layer conv1 --weights       # the kernels instead
python -m vizkit.features --list-layers
python -m vizkit.features --checkpoint cnn.pth --model my_cnn.py:CNN --layer conv1.0   # your own model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from vizkit.attribution import optimize_inputs
from vizkit.checkpoint import normalisation_note
from vizkit.cli import run_cli
from vizkit.errors import VizkitError
from vizkit.export import Normalized
from vizkit.hooks import capture, layer_names, resolve_layers
from vizkit.inputs import Sample, add_input_args, add_model_args, load_model, load_sample
from vizkit.models import conv_layer_names, require_conv
from vizkit.plots import activation_figure, kernels_figure, save_figure, tiles_figure


def drawable_layers(model: nn.Module) -> list[str]:
    """What --layer all draws: every conv and fully connected layer, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def output_shapes(model: nn.Module, input_shape: list[int]) -> dict[str, tuple[int, ...]]:
    names = layer_names(model)
    with torch.no_grad(), capture(model, names) as out:
        model(torch.zeros(1, *input_shape))
    return {n: tuple(out[n].shape[1:]) for n in names if n in out}


def describe(prediction: torch.Tensor, classes: list[str], sample: Sample) -> str:
    probs = prediction.softmax(-1)[0]
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
    p.add_argument("--list-layers", action="store_true", help="print the layer names with their output shapes")
    p.add_argument("--weights", action="store_true", help="draw the layer's conv kernels instead of its activations")
    p.add_argument(
        "--optimize", action="store_true", help="synthesise, per channel, the input that excites it most (from noise)"
    )
    p.add_argument("--out", help="output .png (one layer) or directory (default: <run>/features/<layer>-<input>.png)")
    p.add_argument("--tensorboard", action="store_true", help="also add the figures to the run's TensorBoard log")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        model, ckpt, ckpt_path = load_model(args)
        if args.list_layers:
            shapes = output_shapes(model, ckpt["input_shape"])
            modules = dict(model.named_modules())
            width = max([10] + [len(n) for n in shapes])
            kinds = {n: type(modules[n]).__name__ for n in shapes}
            kind_width = max([12] + [len(k) for k in kinds.values()])
            for name, shape in shapes.items():
                print(f"{name:<{width}} {kinds[name]:<{kind_width}} {' x '.join(map(str, shape))}")
            return 0
        convs = conv_layer_names(model)
        if not args.layer and not convs:
            raise VizkitError(
                "this model has no conv layer to show by default; name one with --layer (see --list-layers)"
            )
        wanted = args.layer or convs[:1]
        layers = drawable_layers(model) if "all" in wanted else list(dict.fromkeys(wanted))
        modules = resolve_layers(model, layers)
        run_dir = ckpt_path.parent
        figures = {}
        if args.optimize:
            net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
            for name in modules:
                require_conv(model, name, "--optimize")
                inputs = optimize_inputs(net, model, name, ckpt["input_shape"])
                title = f"{name}: for each channel, the input that excites it most (gradient ascent from noise)"
                figures[f"{name}-optimized"] = tiles_figure(inputs, title)
        elif args.weights:
            for name in modules:
                figures[f"{name}-weights"] = kernels_figure(require_conv(model, name, "--weights").weight, name)
        else:
            sample = load_sample(args, ckpt)
            with torch.no_grad(), capture(model, layers) as acts:
                logits = Normalized(model, ckpt["mean"], ckpt["std"])(sample.pixels)
            title = describe(logits, ckpt["classes"], sample) + "; " + normalisation_note(ckpt)
            for name in layers:
                figures[f"{name}-{sample.name}"] = activation_figure(acts[name][0], name, sample.pixels[0], title)
        paths = output_paths(args.out, run_dir / "features", list(figures))
        for path, fig in zip(paths, figures.values(), strict=True):
            print(save_figure(fig, path))
        if args.tensorboard:
            from tensorboardX import SummaryWriter

            with SummaryWriter(logdir=str(run_dir)) as writer:
                for name, fig in figures.items():
                    writer.add_figure(f"features/{name}", fig, 0)
            print(f"added {len(figures)} figure(s) to the TensorBoard log in {run_dir}")
        return 0

    return run_cli(body, "vizkit.features")


if __name__ == "__main__":
    sys.exit(main())
