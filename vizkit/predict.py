"""python -m vizkit.predict: read digits from photos with a trained model.

    python -m vizkit.predict photo.jpg more-photos/          # the newest run's best.pth
    python -m vizkit.predict --run runs/X --json photo.jpg
    python -m vizkit.predict --show prediction.png photo.jpg

Each photo is prepared as MNIST's digits were (vizkit/preprocess.py): light ink on dark, the longer side
20 px, centred by centre of mass in 28 x 28. The checkpoint carries its normalisation, so no flags are needed.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from vizkit.cli import run_cli
from vizkit.graph import forward_graph, probabilities
from vizkit.inputs import add_model_args, load_model
from vizkit.normalize import Normalized
from vizkit.plots import prediction_figure, save_figure
from vizkit.preprocess import image_files, load_image, prepare_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vizkit.predict",
        description=__doc__.split("\n")[0],
        epilog="Photos: PNG or JPEG, RGB or gray, any size, dark ink on light paper or light on dark.",
    )
    add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="photos, or folders of photos")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line: file, prediction, class, probabilities"
    )
    p.add_argument("--show", metavar="OUT.png", help="save a figure: the photo, the input the model saw, the bars")
    p.add_argument("--top", type=int, default=3, help="candidates printed per image (default: 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        files = image_files(args.images)
        model, ckpt, _ = load_model(args)
        wrapped = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
        classes = ckpt["classes"]
        # Read and prepare everything first: a bad file stops the command before anything is printed.
        photos = [load_image(f) for f in files]
        inputs = torch.cat([prepare_for(img, ckpt) for img in photos])
        with torch.no_grad():
            kind = forward_graph(model, ckpt["input_shape"]).output_kind  # logits, or (log-)probabilities
            probs = probabilities(wrapped(inputs), kind).numpy()
        for f, p in zip(files, probs, strict=True):
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": str(f),
                            "prediction": int(p.argmax()),
                            "class": classes[int(p.argmax())],
                            "probabilities": p.astype(float).round(6).tolist(),
                        }
                    )
                )
            else:
                order = np.argsort(-p)[: max(1, args.top)]
                ranked = [f"{classes[i]} ({100 * p[i]:.1f}%)" for i in order]
                print(f"{f}: {ranked[0]}" + (f"; then {', '.join(ranked[1:])}" if len(ranked) > 1 else ""))
        if args.show:
            rows = [
                (f.name, np.asarray(img.convert("RGB")), x, p)
                for f, img, x, p in zip(files, photos, inputs, probs, strict=True)
            ]
            path = save_figure(prediction_figure(rows, classes), args.show)
            print(f"figure: {path}", file=sys.stderr if args.json else sys.stdout)
        return 0

    return run_cli(body, "vizkit.predict")


if __name__ == "__main__":
    sys.exit(main())
