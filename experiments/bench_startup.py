"""Benchmark: how long an inspection command takes against `python -c "import torch"`, side by side.

    python experiments/bench_startup.py --run runs/X       # 5 interleaved repeats; writes experiments/results/
    python experiments/bench_startup.py                    # trains a 1-epoch run on 2,000 images first

Each command reads a run and writes one figure: `features --layer conv1`, `predict` on a photo, and
`explain --index 0`. The target: at most 1.5x the bare torch import, measured in the same run, medians.
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
TARGET = 1.5


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
    p.add_argument("--out", help="results file (default: experiments/results/startup-<date>-cpu<N>.json)")
    args = p.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Path(args.run).resolve() if args.run else work / "run"
        if not args.run:
            train = [py, "-m", "vizkit.train", "--epochs", "1", "--limit-train", "2000", "--log", "off",
                     "--data-dir", args.data_dir, "--run-dir", str(run)]  # fmt: skip
            subprocess.run(train, check=True, capture_output=True)
        from PIL import Image, ImageDraw

        photo = work / "seven.png"
        img = Image.new("L", (400, 300), 220)
        ImageDraw.Draw(img).line([(150, 60), (260, 60), (190, 240)], fill=30, width=18)
        img.save(photo)
        commands = {
            "import_torch": [py, "-c", "import torch"],
            "features": [py, "-m", "vizkit.features", "--run", str(run), "--layer", "conv1", "--out", str(work / "f")],
            "predict": [py, "-m", "vizkit.predict", "--run", str(run), str(photo)],
            "explain": [py, "-m", "vizkit.explain", "--run", str(run), "--index", "0", "--data-dir", args.data_dir,
                        "--out", str(work / "e")],
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in commands}
        for cmd in commands.values():  # warm the file cache once
            seconds(cmd, work)
        for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits every command
            for name, cmd in commands.items():
                times[name].append(seconds(cmd, work))
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    ratios = {name: round(m / medians["import_torch"], 3) for name, m in medians.items() if name != "import_torch"}
    import torch

    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": medians,
        "ratio_over_import_torch": ratios,
        "target_ratio": TARGET,
    }
    out = (
        Path(args.out)
        if args.out
        else REPO / "experiments" / "results" / f"startup-{datetime.now():%Y%m%d}-cpu{os.cpu_count()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"import torch: {medians['import_torch']} s (median of {args.repeats})")
    for name, ratio in ratios.items():
        print(f"{name}: {medians[name]} s = {ratio}x  [target <= {TARGET}: {'ok' if ratio <= TARGET else 'OVER'}]")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
