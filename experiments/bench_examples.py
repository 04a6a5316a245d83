"""Benchmark: dataset examples of one layer over the whole test set against a one-image `features`, side by side.

    python experiments/bench_examples.py --run runs/X      # 5 interleaved repeats; writes experiments/results/
    python experiments/bench_examples.py                   # trains a 1-epoch run on 2,000 images first

Issue 21's target: `features --layer L --examples K` over the 10,000 test images at most 2x the time of a
one-image `features --layer L` command, on 2 cores. Measured for conv2 and conv3 of the default model, with
--json (the examples alone: one batched pass of the graph) and with the figure (which adds each channel's
optimised input, 160 steps of gradient ascent, and the drawing). Medians; ratios over the one-image command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 2.0


def seconds(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a run directory (default: train a small one)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--out", help="results file (default: experiments/results/examples-<date>-cpu<N>.json)")
    args = p.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Path(args.run).resolve() if args.run else work / "run"
        if not args.run:
            train = [py, "-m", "vizkit.train", "--epochs", "1", "--limit-train", "2000", "--log", "off",
                     "--data-dir", args.data_dir, "--run-dir", str(run)]  # fmt: skip
            subprocess.run(train, check=True, capture_output=True)
        base = [py, "-m", "vizkit.features", "--run", str(run), "--data-dir", args.data_dir]
        commands = {}
        for layer in ("conv2", "conv3"):
            commands[f"{layer}: one image"] = [*base, "--layer", layer, "--out", str(work / f"{layer}.png")]
            commands[f"{layer}: examples --json"] = [*base, "--layer", layer, "--examples", "8", "--json"]
            commands[f"{layer}: examples figure"] = [*base, "--layer", layer, "--examples", "8",
                                                     "--out", str(work / f"{layer}-ex.png")]  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in commands}
        for cmd in commands.values():  # warm the file cache once
            seconds(cmd, work)
        for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits every command
            for name, cmd in commands.items():
                times[name].append(seconds(cmd, work))
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    ratios = {
        name: round(m / medians[name.split(":")[0] + ": one image"], 3)
        for name, m in medians.items()
        if "examples" in name
    }
    import torch

    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "repeats": args.repeats,
        "test_images": 10_000,
        "seconds": times,
        "median_seconds": medians,
        "ratio_over_one_image": ratios,
        "target_ratio": TARGET,
    }
    out = (
        Path(args.out)
        if args.out
        else REPO / "experiments" / "results" / f"examples-{datetime.now():%Y%m%d}-cpu{os.cpu_count()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, m in medians.items():
        ratio = (
            f" = {ratios[name]}x  [target <= {TARGET}: {'ok' if ratios[name] <= TARGET else 'OVER'}]"
            if name in ratios
            else ""
        )
        print(f"{name}: {m} s{ratio}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
