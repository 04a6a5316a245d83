"""python -m vizkit.explain: what a prediction looks at, for a test image or your own photo.

    python -m vizkit.explain --index 7                  # newest run, test image 7
    python -m vizkit.explain --image my-digit.jpg       # bring your own digit
    python -m vizkit.explain --layer conv2 --out why.png

One figure: (your photo,) the 28 x 28 input the model saw, the probabilities, gradient saliency, integrated
gradients and Grad-CAM over the input, and the first conv layer's feature maps.
"""

from __future__ import annotations

import argparse
import sys

import torch

from vizkit import rundir
from vizkit.attribution import grad_cam, integrated_gradients, no_evidence, saliency
from vizkit.checkpoint import normalisation_note
from vizkit.cli import run_cli
from vizkit.errors import VizkitError
from vizkit.graph import capture, forward_graph, probabilities
from vizkit.inputs import add_input_args, add_model_args, load_model, load_sample
from vizkit.models import display_name
from vizkit.normalize import Normalized
from vizkit.plots import explain_figure, save_figure

MAX_STEPS = 1024  # integrated gradients: one image per step in one batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.explain", description=__doc__.split("\n")[0])
    add_model_args(p)
    add_input_args(p)
    p.add_argument(
        "--layer", help="step for Grad-CAM, any with channels of maps (default: the last conv step's activation)"
    )
    p.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default: 32)")
    p.add_argument("--out", help="output .png (default: <run>/explain/<input>.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if not 1 <= args.steps <= MAX_STEPS:  # a batch of that many images: memory, not a better answer
            raise VizkitError(f"--steps {args.steps}: give 1 to {MAX_STEPS} (32 is plenty)")
        model, ckpt, ckpt_path = load_model(args)
        graph = forward_graph(model, ckpt["input_shape"])
        convs = graph.maps("conv")
        if not (args.layer or convs):
            raise VizkitError(f"Grad-CAM needs a conv layer and model '{display_name(ckpt['model'])}' has none; "
                              "use a model with an nn.Conv2d")  # fmt: skip
        layer = args.layer or graph.cam_step()
        step = graph.resolve(layer)  # an unknown name lists every step
        if not step.maps:
            maps = [s.name for s in graph.steps if s.maps]
            raise VizkitError(f"Grad-CAM needs a step with channels of maps and '{layer}' gives "
                              f"{' x '.join(map(str, step.shape))}; steps with maps: {', '.join(maps)}")  # fmt: skip
        sample = load_sample(args, ckpt, ckpt_path)
        net = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
        with torch.no_grad(), capture(model, convs[:1], ckpt["input_shape"]) as first:
            probs = probabilities(net(sample.pixels), graph.output_kind)[0].numpy()
        target = int(probs.argmax()) if args.target is None else args.target
        classes = ckpt["classes"]
        if not 0 <= target < len(classes):
            raise VizkitError(f"--target {target} is not a class; use 0 to {len(classes) - 1}")
        x = sample.pixels
        cam = grad_cam(net, model, layer, x, target)
        empty = no_evidence(cam, layer, classes[target])
        maps = {
            "gradient saliency": saliency(net, x, target),
            "integrated gradients": integrated_gradients(net, x, target, args.steps),
            f"Grad-CAM ({empty})" if empty else f"Grad-CAM ({layer})": cam,
        }
        truth = f", label {classes[sample.label]}" if sample.label is not None else ""
        title = f"{sample.name}{truth}: why {classes[target]}? ({ckpt_path}; {normalisation_note(ckpt)})"
        fig = explain_figure(
            x[0], maps, probs, classes, title, sample.original, (convs[0], first[convs[0]][0]) if convs else None
        )
        at = f"-epoch-{args.epoch}" if args.epoch is not None else ""  # beside the best weights' figure
        out = args.out or rundir.run_of(ckpt_path) / "explain" / f"{sample.name}{at}.png"
        print(save_figure(fig, out))
        return 0

    return run_cli(body, "vizkit.explain")


if __name__ == "__main__":
    sys.exit(main())
