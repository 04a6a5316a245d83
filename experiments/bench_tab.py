"""Benchmark: vizkit's TensorBoard tab, server side. Writes experiments/results/tab-<date>-<device>.json.

    python experiments/bench_tab.py               # about a minute on 2 cores
    python experiments/bench_tab.py --smoke       # a few updates, to check the script still runs

1. One update of the tab for the default model (`vizkit`), as the page asks for it: decode and prepare the
   drawing (a 280 x 280 PNG, as the canvas sends it), the forward pass with every step of the forward graph
   captured, Grad-CAM, and the JSON-ready answer. Also a test image and a 1600 x 1200 photo, and a drawing for
   pytorch/examples' mnist Net (functional F.relu, pooling, log_softmax). Median and 90th percentile over
   --updates, after 5 warm-up updates. The target is at most 50 ms on 2 CPU cores.
2. What the forward graph costs: one forward pass of the default model with every step captured through the
   traced graph (graph.capture, what the tab does now), against every module captured through hooks
   (hooks.capture, what it did before, which sees no functional step), interleaved; medians and their ratio.
3. TensorBoard's start-up with vizkit installed against without it, side by side (interleaved, in fresh
   processes): the seconds until the server answers /data/plugins_listing, and whether torch was imported.
4. A channel's card (channel.card) for the default model and a drawing, as the pointer moves over the map of
   conv1, conv2 and conv3 (a new unit each time: its arithmetic, receptive field, kernels), beside the page's
   own update on the same input (the baseline). Target: at most 50 ms on the server.
5. The epoch slider: the server's answer to a move onto an epoch it has not opened yet (the plugin opens
   epochs/epoch-N.pth, then the update) and onto one it has (the update alone), beside an update at the
   epoch already shown (the baseline). Target: at most 100 ms.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
TARGET_MS = 50.0
SWITCH_TARGET_MS = 100.0

START = r"""
import sys, time, urllib.request
t0 = time.perf_counter()
from tensorboard import default, program
plugins = [p for p in default.get_plugins() if {dynamic} or getattr(p, "plugin_name", None) != "vizkit"]
tb = program.TensorBoard(plugins=plugins)
tb.configure(argv=[None, "--logdir", {logdir!r}, "--host", "127.0.0.1", "--port", "0"])
url = tb.launch()
listing = urllib.request.urlopen(url + "data/plugins_listing").read()
print(time.perf_counter() - t0, "torch" in sys.modules, b'"vizkit"' in listing)
"""


def drawing_png() -> str:
    """A 7 drawn on the tab's black 280 x 280 canvas with an 18 px pen, as a data: URL."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (280, 280), "black")
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (130, 230)], fill="white", width=18, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def photo_jpeg() -> str:
    """A 1600 x 1200 'photo': dark ink on grey paper, as a data: URL."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (1600, 1200), (200, 196, 190))
    ImageDraw.Draw(img).line([(600, 300), (1000, 300), (760, 900)], fill=(30, 30, 40), width=60)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


EXAMPLES_NET = Path(__file__).with_name("pytorch_examples_net.py")  # pytorch/examples' mnist Net, as written


def checkpoint(folder: Path, spec: str, data_dir: str) -> Path:
    import torch

    from vizkit.checkpoint import model_fields, save_checkpoint
    from vizkit.models import get_model

    torch.manual_seed(0)
    path = folder / "best.pth"
    save_checkpoint(path, get_model(spec, 1, 28, 10), **model_fields(spec), config={"data_dir": data_dir},
                    classes=[str(i) for i in range(10)], mean=[0.1307], std=[0.3081], input_shape=[1, 28, 28],
                    dataset="mnist", epoch=1, val_accuracy=None)  # fmt: skip
    return path


def time_updates(data_dir: str, updates: int) -> dict:
    from vizkit.tensorboard_plugin import live

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("default", "examples"):
            Path(tmp, name).mkdir()
        default = live.open_run(checkpoint(Path(tmp, "default"), "vizkit", data_dir))
        examples = live.open_run(checkpoint(Path(tmp, "examples"), f"{EXAMPLES_NET}:Net", data_dir))
        requests = {
            "draw": (default, {"source": "draw", "image": drawing_png()}),
            "test": (default, {"source": "test", "index": 0}),
            "photo": (default, {"source": "photo", "image": photo_jpeg()}),
            "draw (pytorch/examples Net)": (examples, {"source": "draw", "image": drawing_png()}),
        }
        results = {}
        for name, (loaded, request) in requests.items():
            for _ in range(5):  # warm-up: the first passes allocate; the test set is read once
                live.update(loaded, request)
            times = []
            for _ in range(updates):
                t0 = time.perf_counter()
                answer = live.update(loaded, request)
                times.append(1000 * (time.perf_counter() - t0))
            times.sort()
            results[name] = {
                "median_ms": round(statistics.median(times), 2),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
                "layers": len(answer["layers"]),
                "answer_kb": round(len(json.dumps(answer)) / 1024, 1),
            }
    return results


def time_capture(repeats: int) -> dict:
    """One forward pass of the default model with every step captured: the traced graph against module hooks."""
    import torch

    from vizkit.graph import capture, forward_graph
    from vizkit.hooks import capture as capture_modules
    from vizkit.models import get_model

    torch.manual_seed(0)
    model = get_model("vizkit", 1, 28, 10).eval()
    x = torch.rand(1, 1, 28, 28)
    steps = [s.name for s in forward_graph(model, [1, 28, 28]).steps]
    modules = [n for n, m in model.named_modules() if n and next(m.children(), None) is None]

    def graph() -> None:
        with torch.no_grad(), capture(model, steps, [1, 28, 28]):
            model(x)

    def hooks() -> None:
        with torch.no_grad(), capture_modules(model, modules):
            model(x)

    times: dict[str, list[float]] = {"graph": [], "hooks": []}
    for _ in range(repeats):  # interleaved blocks of 20 passes, so a slow moment of the machine hits both
        for name, run in (("graph", graph), ("hooks", hooks)):
            t0 = time.perf_counter()
            for _ in range(20):
                run()
            times[name].append(1e6 * (time.perf_counter() - t0) / 20)
    medians = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return {"median_us": medians, "steps": len(steps), "modules": len(modules),
            "ratio_graph_over_hooks": round(medians["graph"] / medians["hooks"], 3)}  # fmt: skip


def _stats(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2)}


def time_card(data_dir: str, updates: int) -> dict:
    """The card's update at a new unit each time, per conv step, beside the page's update (interleaved)."""
    from vizkit.tensorboard_plugin import channel, live

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "default").mkdir()
        loaded = live.open_run(checkpoint(Path(tmp, "default"), "vizkit", data_dir))
        drawing = {"source": "draw", "image": drawing_png()}
        results: dict[str, dict] = {}
        times: dict[str, list[float]] = {"update (baseline)": [], "card conv1": [], "card conv2": [], "card conv3": []}
        sides = {"conv1": 28, "conv2": 14, "conv3": 7}
        for _ in range(5):
            live.update(loaded, drawing)
            for layer in sides:
                channel.card(loaded, {**drawing, "layer": layer, "channel": 0})
        for i in range(updates):
            t0 = time.perf_counter()
            live.update(loaded, drawing)
            times["update (baseline)"].append(1000 * (time.perf_counter() - t0))
            for layer, side in sides.items():
                row, col = (i * 7) % side, (i * 3) % side  # the pointer somewhere new
                t0 = time.perf_counter()
                answer = channel.card(loaded, {**drawing, "layer": layer, "channel": i % 16, "row": row, "col": col})
                times[f"card {layer}"].append(1000 * (time.perf_counter() - t0))
                sums = answer["arithmetic"]
                assert abs(sums["value"] - sums["forward"]) < 1e-4, (layer, row, col)  # the card still agrees
        for name, t in times.items():
            results[name] = _stats(t)
    return results


def time_epoch_switch(data_dir: str, epochs: int) -> dict:
    """A run keeping `epochs` epochs' weights behind TensorBoard's plugin object: each epoch opened the first time
    the slider reaches it, then again once opened, beside an update at the epoch shown."""
    from tensorboard.plugins import base_plugin

    from vizkit import rundir
    from vizkit.tensorboard_plugin import live
    from vizkit.tensorboard_plugin.plugin import VizkitPlugin

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp, "run")
        (run / rundir.EPOCHS).mkdir(parents=True)
        best = checkpoint(run, "vizkit", data_dir)
        for n in range(1, epochs + 1):
            shutil.copy2(best, rundir.epoch_file(run, n))
        plugin = VizkitPlugin(base_plugin.TBContext(logdir=tmp))
        drawing = {"source": "draw", "image": drawing_png()}
        shown = plugin._open("run")
        for _ in range(5):
            live.update(shown, drawing)
        times: dict[str, list[float]] = {"update at the epoch shown (baseline)": [], "to an epoch not opened yet": [],
                                         "to an epoch opened before": []}  # fmt: skip
        for n in range(1, epochs + 1):
            for name in ("to an epoch not opened yet", "to an epoch opened before"):
                t0 = time.perf_counter()
                live.update(plugin._open("run", n), drawing)
                times[name].append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            live.update(shown, drawing)
            times["update at the epoch shown (baseline)"].append(1000 * (time.perf_counter() - t0))
        return {name: _stats(t) for name, t in times.items()}


def time_startup(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as logdir:
        Path(logdir, "run").mkdir()
        Path(logdir, "run", "best.pth").write_bytes(b"")  # a run with a checkpoint: the tab is active
        runs: dict[str, list] = {"without_vizkit": [], "with_vizkit": []}
        for _ in range(repeats):  # interleaved, so a slow moment of the machine hits both
            for name, dynamic in (("without_vizkit", False), ("with_vizkit", True)):
                code = START.format(dynamic=dynamic, logdir=logdir)
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
                if out.returncode != 0:
                    raise SystemExit(f"tensorboard did not start: {out.stderr[-500:]}")
                seconds, torch_imported, tab = out.stdout.split()
                runs[name].append((float(seconds), torch_imported == "True", tab == "True"))
    medians = {k: round(statistics.median(s for s, _, _ in v), 3) for k, v in runs.items()}
    return {
        "median_seconds": medians,
        "ratio_with_over_without": round(medians["with_vizkit"] / medians["without_vizkit"], 3),
        "torch_imported_at_start": any(t for _, t, _ in runs["with_vizkit"]),
        "vizkit_tab_listed": all(tab for _, _, tab in runs["with_vizkit"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="TensorBoard start-ups of each kind")
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--smoke", action="store_true", help="5 updates and 1 start-up each: does the script run?")
    p.add_argument("--out", help="results file (default: experiments/results/tab-<date>-<device>.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.updates, args.repeats = 5, 1
    import torch

    updates = time_updates(args.data_dir, args.updates)
    captured = time_capture(max(5, args.updates // 4))
    startup = time_startup(args.repeats)
    card = time_card(args.data_dir, max(5, args.updates // 2))
    switch = time_epoch_switch(args.data_dir, 5 if args.smoke else 20)
    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "update": updates,
        "update_target_ms": TARGET_MS,
        "capture": captured,
        "startup": startup,
        "card": card,
        "card_target_ms": TARGET_MS,
        "epoch_switch": switch,
        "epoch_switch_target_ms": SWITCH_TARGET_MS,
    }  # fmt: skip
    out = Path(args.out) if args.out else RESULTS / f"tab-{datetime.now():%Y%m%d}-cpu{os.cpu_count()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in updates.items():
        verdict = "ok" if r["median_ms"] <= TARGET_MS else "OVER"
        print(f"update ({name}): median {r['median_ms']} ms, p90 {r['p90_ms']} ms, {r['layers']} layers, "
              f"{r['answer_kb']} KB  [target <= {TARGET_MS:g} ms: {verdict}]")  # fmt: skip
    c = captured["median_us"]
    print(f"every step captured, default model: graph {c['graph']} us ({captured['steps']} steps), hooks "
          f"{c['hooks']} us ({captured['modules']} modules): ratio {captured['ratio_graph_over_hooks']}")  # fmt: skip
    s = startup["median_seconds"]
    ratio, torch_imported = startup["ratio_with_over_without"], startup["torch_imported_at_start"]
    print(f"tensorboard start-up: {s['without_vizkit']} s without vizkit, {s['with_vizkit']} s with it "
          f"(ratio {ratio}); torch imported: {torch_imported}")  # fmt: skip
    for what, rows, target in (("card", card, TARGET_MS), ("epoch slider", switch, SWITCH_TARGET_MS)):
        for name, r in rows.items():
            verdict = "ok" if r["median_ms"] <= target else "OVER"
            print(
                f"{what}, {name}: median {r['median_ms']} ms, p90 {r['p90_ms']} ms  "
                f"[target <= {target:g} ms: {verdict}]"
            )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
