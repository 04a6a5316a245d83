"""python -m vizkit.report RUN_DIR [RUN_DIR ...]: one self-contained HTML page per run, or a comparison.

Images are embedded, nothing is fetched: the file opens from disk, offline, and can be mailed as it is.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from vizkit import rundir
from vizkit.checkpoint import open_checkpoint, read_checkpoint
from vizkit.cli import run_cli
from vizkit.errors import VizkitError
from vizkit.files import write_output
from vizkit.graph import capture, forward_graph, probabilities
from vizkit.inputs import test_images
from vizkit.normalize import Normalized
from vizkit.plots import feature_grid, kernels_figure
from vizkit.rundir import find_checkpoint
from vizkit.units import format_map, model_map

FEATURE_IMAGES = 4  # test images whose feature maps the report shows

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; } pre { background: #f8f8f8; padding: 8px; }
.diff { background: #fff3cd; }
"""


def png_data(source: Figure | Path | torch.Tensor) -> str:
    """A data: URI of a figure, a PNG file, or an image tensor (C, H, W) in [0, 1]."""
    buf = io.BytesIO()
    if isinstance(source, Figure):
        source.savefig(buf, format="png")
    elif isinstance(source, Path):
        buf.write(source.read_bytes())
    else:
        pixels = (source.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(source: Figure | Path | torch.Tensor, alt: str) -> str:
    return f'<img src="{png_data(source)}" alt="{html.escape(alt)}">'


def table(rows: list[list[Any]], header: list[str], highlight: set[int] | None = None) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    body = "".join(
        f"<tr{' class=diff' if highlight and i in highlight else ''}>{''.join(cell(v) for v in row)}</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr>{body}</table>"


def load_run(run_dir: Path) -> dict[str, Any]:
    return {"dir": run_dir, "metrics": rundir.read_metrics(run_dir), "checkpoint": find_checkpoint(str(run_dir))}


def feature_maps(
    model: torch.nn.Module, ckpt: dict[str, Any], checkpoint: Path, steps: list[str], data_dir: str | None
) -> str:
    """Each step's maps for the first test images (or the examples a Run kept); a line saying why where the
    run's images are not on this machine."""
    try:
        test = test_images(ckpt, checkpoint, data_dir)
    except VizkitError as exc:
        return f"<p>Not drawn: {html.escape(str(exc))}.</p>"
    pixels = test.images[:FEATURE_IMAGES].float() / 255
    graph = forward_graph(model, ckpt["input_shape"])
    with torch.no_grad(), capture(model, steps, ckpt["input_shape"]) as maps:
        output = Normalized(model, ckpt["mean"], ckpt["std"])(pixels)
    classes, preds = ckpt["classes"], probabilities(output, graph.output_kind).argmax(1)
    if test.labels is not None:
        pairs = zip(test.labels[: len(preds)], preds, strict=True)
        shown = ", ".join(f"{classes[int(y)]} (predicted {classes[int(p)]})" for y, p in pairs)
    else:  # the examples a Run kept come without labels
        shown = ", ".join(f"predicted {classes[int(p)]}" for p in preds)
    parts = [f"<p>Images 0 to {len(pixels) - 1} of {html.escape(test.what)}: {html.escape(shown)}. "
             "A row per image, a tile per channel, one colour scale per step.</p>"]  # fmt: skip
    for name in steps:
        parts.append(f"<h4>{name}</h4>" + img(feature_grid(maps[name]), f"feature maps of {name}"))
    return "\n".join(parts)


def run_section(run: dict[str, Any], data_dir: str | None, model_spec: str | None = None) -> str:
    run_dir, metrics = run["dir"], run["metrics"]
    model, ckpt = open_checkpoint(run["checkpoint"], model_spec)
    parts = [f"<h2>Run {html.escape(str(run_dir))}</h2>"]
    tested = isinstance(metrics.get("test_accuracy"), (int, float))  # a Run whose loop never called evaluate()
    final = [
        ["test accuracy", f"{100 * metrics['test_accuracy']:.2f}%" if tested else "not measured"],
        ["test loss", metrics.get("test_loss", "not measured")],
        ["best epoch (by validation accuracy)", metrics.get("best_epoch", "")],
        ["best validation accuracy", f"{100 * metrics.get('best_val_accuracy', float('nan')):.2f}%"],
        ["seconds of training", metrics.get("train_seconds", float("nan"))],
    ]
    parts.append("<h3>Final metrics</h3>" + table(final, ["metric", "value"]))
    config = ckpt["config"]
    parts.append("<h3>Config</h3>" + (table([[k, v] for k, v in config.items()], ["key", "value"]) if config else
                 "<p>None: this run came from a training loop of your own (a Run given no config).</p>"))  # fmt: skip
    source = ckpt.get("data_source") or ckpt.get("dataset") or "not recorded"
    where = f" ({ckpt['data_dir']})" if ckpt.get("data_dir") else ""
    parts.append(f"<p>Data: {html.escape(source + where)}; classes: {html.escape(', '.join(ckpt['classes']))}.</p>")
    for name, title in (
        ("curves.png", "Curves"),
        ("confusion_matrix.png", "Confusion matrix"),
        ("top_losses.png", "Top losses"),
    ):
        if (run_dir / name).is_file():
            parts.append(f"<h3>{title}</h3>" + img(run_dir / name, title))
    graph = forward_graph(model, ckpt["input_shape"])
    convs = graph.maps("conv", "add")  # as the Images tab shows them
    if convs:
        parts.append("<h3>Feature maps</h3>" + feature_maps(model, ckpt, run["checkpoint"], convs, data_dir))
        modules = dict(model.named_modules())
        kernels = [s.module for s in graph.steps if isinstance(modules.get(s.module), torch.nn.Conv2d)]
        if kernels:  # a functional F.conv2d has its weight elsewhere: no kernels to show
            figure = kernels_figure(modules[kernels[0]].weight, kernels[0])
            parts.append(f"<h3>Kernels of {kernels[0]}</h3>" + img(figure, "kernels"))
    last_conv = graph.maps("conv")[-1:]
    if last_conv and rundir.examples_file(run_dir, last_conv[0]).is_file():  # training logged them (--log full)
        where = rundir.examples_file(run_dir, last_conv[0])
        parts.append(f"<h3>What each channel of {html.escape(last_conv[0])} responds to</h3><p>The test images "
                     "that drive each channel hardest (cropped to what its strongest unit sees, outlined) and least; "
                     "any step: <code>python -m vizkit.features --layer NAME --examples 8</code>.</p>"
                     + img(where, f"dataset examples of {last_conv[0]}"))  # fmt: skip
    summary = format_map(model_map(model, ckpt["input_shape"]))
    parts.append(f"<h3>Model summary</h3><pre>{html.escape(summary)}</pre>")
    return "\n".join(parts)


def comparison_section(runs: list[dict[str, Any]]) -> str:
    configs = [read_checkpoint(r["checkpoint"])["config"] for r in runs]  # no model is built: no code runs
    keys = [k for k in configs[0] if k not in ("run_dir",)]
    differs = {i for i, k in enumerate(keys) if len({json.dumps(c.get(k)) for c in configs}) > 1}
    rows = [[k] + [c.get(k, "") for c in configs] for k in keys]
    names = [r["dir"].name for r in runs]
    metric_rows = [
        ["test accuracy"] + [f"{100 * r['metrics']['test_accuracy']:.2f}%" for r in runs],
        ["test loss"] + [r["metrics"]["test_loss"] for r in runs],
        ["seconds of training"] + [r["metrics"].get("train_seconds", float("nan")) for r in runs],
        ["epochs"] + [len(r["metrics"].get("history", [])) for r in runs],
    ]
    fig = Figure(figsize=(12, 4.2), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, r in zip(names, runs, strict=True):
        h = r["metrics"].get("history", [])
        epochs = [e["epoch"] for e in h]
        ax_loss.plot(epochs, [e["val_loss"] for e in h], "-o", label=name)
        ax_acc.plot(epochs, [100 * e["val_accuracy"] for e in h], "-o", label=name)
    ax_loss.set(title="validation loss", xlabel="epoch")
    ax_acc.set(title="validation accuracy (%)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return (
        "<h2>Comparison</h2>"
        + table(metric_rows, ["metric"] + names)
        + "<h3>Curves</h3>"
        + img(fig, "validation curves of every run")
        + "<h3>Configs (differences highlighted)</h3>"
        + table(rows, ["key"] + names, differs)
    )


def render(runs: list[dict[str, Any]], data_dir: str | None, model_spec: str | None = None) -> str:
    title = "vizkit report: " + ", ".join(r["dir"].name for r in runs)
    body = [f"<h1>{html.escape(title)}</h1><p>Written {datetime.now():%Y-%m-%d %H:%M} by python -m vizkit.report.</p>"]
    if len(runs) > 1:
        body.append(comparison_section(runs))
    body += [run_section(r, data_dir, model_spec) for r in runs]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vizkit.report", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run, or several to compare")
    p.add_argument("--out", help="output .html (default: RUN_DIR/report.html for one run, report.html for several)")
    p.add_argument("--data-dir", help="where the test set lives (default: the one each run was trained from)")
    p.add_argument("--model", metavar="PATH.py:NAME", help="your model's code, for runs whose model file is not on "
                   "this machine as it was at training")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        runs = [load_run(Path(r)) for r in args.runs]
        out = (
            Path(args.out) if args.out else (runs[0]["dir"] / rundir.REPORT if len(runs) == 1 else Path("report.html"))
        )
        page = render(runs, args.data_dir, args.model)
        print(write_output(out, lambda tmp: tmp.write_text(page, encoding="utf-8")))
        return 0

    return run_cli(body, "vizkit.report")


if __name__ == "__main__":
    sys.exit(main())
