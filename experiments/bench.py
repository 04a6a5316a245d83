"""Benchmark: the tutorial's training loop against vizkit's runner, side by side, on this machine.

    python experiments/bench.py                 # about 20 minutes on 2 cores; writes experiments/results/
    python experiments/bench.py --repeats 9     # more repeats, for a tighter median
    python experiments/bench.py --smoke         # one batch of each, in one process, to check the script runs

Variants, each in its own process so peak memory is its own:
  a  tutorial: recipe 001 as the tutorials write it (torchvision MNIST, per-sample ToTensor + Normalize,
     DataLoader batch 64, SGD 0.01 momentum 0.5), the same `net` model, one epoch on the same 55,000 images
  b  vizkit.train --config 001-net --epochs 1 --log off
  c  vizkit.train --config 001-net --epochs 1 --log full
  d  inference on b's best epoch: torch eager vs onnxruntime on model.onnx, batch 1 and batch 256
  k  recipe 001's model alone: forward, loss and backward on one fixed batch of 64, an epoch's steps of it,
     in vizkit's layout (NHWC and oneDNN, the faster of those profile_epoch.py measures). What an eager loop
     that runs the model as written pays at batch 64; with k/a above 0.25, b/a cannot reach 0.25 without
     replacing PyTorch's kernels or the model
  e  vizkit.train (the default recipe), --repeats times: test accuracy, seconds of training, the first epoch's
     training time against the median of the later ones, and peak memory
  w  after each e: the default recipe's first-use costs, which only a first epoch pays (oneDNN creates its
     kernels for a shape when it first meets it, Adam its state, and memory is touched for the first time),
     timed step by step on the model, optimizer and batches alone: a lower bound, without the data path
  f  vizkit.train --config fast, seeds 0-4, full logging: test accuracy (mean, min, max) and seconds of training
  g  pytorch/examples' mnist/main.py loop (its Net, Adadelta lr 1.0, StepLR gamma 0.7, batch 64, the 60,000
     training images) with the test set evaluated after each epoch, until 99.0% or 5 epochs; the evaluation
     is not charged to its training time. `--only fast` runs f and g alone (about 9 minutes), `--only recipes`
     a to e, k and w alone (about 11 minutes).
  GPU: a row naming the CUDA device or saying there is none. No GPU variant is written yet (no GPU has been
     lent to this project to run one), so the row holds no figure either way.
Epoch time is the whole epoch: training, validation and logging (the tutorial's is training only, which
favours the baseline). a, b, c, d and k run interleaved, --repeats times; the ratios b/a, c/b and k/a are the
medians of each repeat's own ratio (the runs of one repeat are seconds apart, so this VM's drift, 20% within
a minute, cancels), with the ratio of the medians beside them. c/b is given twice: whole epochs, and with the
training steps taken as equal (they differ only by the two Loss/step points an epoch that --log full writes),
which adds to b's epoch what logging added to c's, each run's epoch less its training steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
MEMORY_BEFORE_MB = 1058  # the default recipe's peak RSS before issue 12 (bench-20261123-cpu2.json)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- variants (run in a child process) -----------------------------------------------------------------


def tutorial(data_dir: str, limit: int) -> dict:
    """The tutorials' loop, written as they write it."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from vizkit.data import ensure_mnist
    from vizkit.models import get_model

    ensure_mnist(Path(data_dir))
    torch.manual_seed(0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(data_dir, train=True, transform=transform)
    train_set = Subset(train_set, range(min(limit, 55_000)))  # the images vizkit trains on; the rest is its val
    test_set = datasets.MNIST(data_dir, train=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = get_model("net")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        if batch_idx % 300 == 0:
            print(f"batch {batch_idx} loss {loss.item():.4f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += (model(data).argmax(1) == target).sum().item()
    return {
        "epoch_seconds": seconds,
        "images_per_second": len(train_set) / seconds,
        "test_accuracy": correct / len(test_set),
    }


def kernels(data_dir: str, limit: int) -> dict:
    """k: recipe 001's model alone, forward, loss and backward, on one fixed batch of 64, as many times as an
    epoch has steps, in the layout and allocator settings vizkit trains it with. No data path, no optimizer,
    no bookkeeping, no validation: what any eager PyTorch loop that runs this model as written must pay."""
    import torch
    import torch.nn.functional as F

    from vizkit.allocator import keep_freed_memory
    from vizkit.data import batches, load_dataset
    from vizkit.engine import memory_format
    from vizkit.models import get_model

    keep_freed_memory()
    data = load_dataset("mnist", data_dir, limit_train=limit)
    torch.manual_seed(0)
    model = get_model("net", 1, 28, 10)
    layout = memory_format(model, "net")
    model = model.to(memory_format=layout).train()
    x, y = next(batches(data.train, 64, (0.1307,), (0.3081,), memory_format=layout))
    steps = -(-min(limit, 55_000) // 64)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    for _ in range(min(steps, 20)):  # warm-up: oneDNN builds its kernels on first use
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"epoch_seconds": seconds, "steps": steps, "ms_per_step": 1000 * seconds / steps}


def warmup(data_dir: str, limit: int) -> dict:
    """w: what only the default recipe's first epoch pays, at least. oneDNN creates a kernel the first time it
    meets a shape (the first full batch, the last, smaller one) and keeps it; Adam creates its state in the
    first step; memory is touched for the first time. Times every step of one epoch on batches made before
    the clock starts (no data path, no scheduler), then the last batch once more."""
    import torch
    import torch.nn.functional as F

    from vizkit.allocator import keep_freed_memory
    from vizkit.config import TrainConfig
    from vizkit.data import batches, load_dataset
    from vizkit.engine import make_optimizer, memory_format
    from vizkit.models import get_model

    keep_freed_memory()
    cfg = TrainConfig()  # the default recipe
    data = load_dataset("mnist", data_dir, limit_train=limit)
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.model, 1, 28, 10)
    layout = memory_format(model, cfg.model)
    model = model.to(memory_format=layout).train()
    optimizer = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    epoch = list(batches(data.train, cfg.batch_size, (0.1307,), (0.3081,), shuffle=True, generator=gen,
                         augment=cfg.augment, memory_format=layout))  # fmt: skip
    times = [step(x, y) for x, y in epoch]
    last_again = step(*epoch[-1])
    partial = len(epoch) > 1 and len(epoch[-1][1]) < cfg.batch_size  # 55,000 = 429 x 128 + 88
    full = times[:-1] if partial else times
    typical = statistics.median(full[1:]) if len(full) > 1 else full[0]
    one_time = (times[0] - typical) + (times[-1] - last_again if partial else 0.0)
    return {
        "first_step_ms": 1000 * times[0],
        "median_step_ms": 1000 * typical,
        "last_batch_first_ms": 1000 * times[-1],
        "last_batch_again_ms": 1000 * last_again,
        "one_time_seconds": one_time,
        "epoch_steps_seconds": sum(times),
        "one_time_share": one_time / sum(times),
    }


def examples(data_dir: str, limit: int, max_epochs: int) -> dict:
    """pytorch/examples' mnist/main.py as it is written, with a clock around its train() calls only."""
    import torch
    import torch.nn.functional as F
    from pytorch_examples_net import Net  # beside this script: its folder is on sys.path
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from vizkit.data import ensure_mnist

    ensure_mnist(Path(data_dir))
    torch.manual_seed(1)  # its default --seed
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(data_dir, train=True, transform=transform)
    train_set = Subset(train_set, range(min(limit, 60_000)))
    test_loader = DataLoader(datasets.MNIST(data_dir, train=False, transform=transform), batch_size=1000)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    trained, epochs = 0.0, []
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            F.nll_loss(model(data), target).backward()
            optimizer.step()
        scheduler.step()
        trained += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
        epochs.append({"epoch": epoch, "train_seconds": trained, "test_accuracy": correct / 10_000})
        if correct >= 9900:
            break
    reached = next((e["train_seconds"] for e in epochs if e["test_accuracy"] >= 0.99), None)
    return {"epochs": epochs, "seconds_to_99": reached, "test_accuracy": epochs[-1]["test_accuracy"]}


def runner(
    data_dir: str, limit: int, log: str, config: str | None, run_dir: str, epochs: int | None, seed: int | None = None
) -> dict:
    from vizkit.train import main

    argv = ["--log", log, "--data-dir", data_dir, "--run-dir", run_dir, "--limit-train", str(limit)]
    argv += ["--config", config] if config else []
    argv += ["--epochs", str(epochs)] if epochs else []
    argv += ["--seed", str(seed)] if seed is not None else []
    if main(argv) != 0:
        raise SystemExit("vizkit.train failed")
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    first, later = metrics["history"][0], metrics["history"][1:]
    compared = {}
    if later:  # training seconds only: validation and logging are the same work every epoch
        compared["first_over_later_epochs"] = first["seconds"] / statistics.median(h["seconds"] for h in later)
    return {
        **compared,
        "epoch_seconds": statistics.median(h["wall_seconds"] for h in metrics["history"]),
        # validation and Run.epoch's logging: the epoch less its training steps (checkpoints are saved after)
        "outside_steps_seconds": statistics.median(h["wall_seconds"] - h["seconds"] for h in metrics["history"]),
        "train_seconds_first_epoch": first["seconds"],
        "images_per_second": first["images_per_second"],
        "test_accuracy": metrics["test_accuracy"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": sum(h["wall_seconds"] for h in metrics["history"]),
        "epochs": len(metrics["history"]),
    }


def inference(run_dir: str, quick: bool) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from vizkit.checkpoint import open_checkpoint
    from vizkit.normalize import Normalized

    model, ckpt = open_checkpoint(Path(run_dir) / "best.pth")
    eager = Normalized(model, ckpt["mean"], ckpt["std"]).eval()
    session = ort.InferenceSession(str(Path(run_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    out = {}
    for batch, iters in ((1, 20 if quick else 2000), (256, 2 if quick else 40)):
        x = torch.rand(batch, *ckpt["input_shape"])
        xn = x.numpy().astype(np.float32)

        def run_torch(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                eager(x)

        def run_ort(xn: np.ndarray = xn) -> None:
            session.run(None, {"image": xn})

        for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            for _ in range(max(2, iters // 10)):  # warm-up
                fn()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            per_call = (time.perf_counter() - start) / iters
            out[f"{name}_batch{batch}_ms"] = per_call * 1000
            out[f"{name}_batch{batch}_images_per_second"] = batch / per_call
    return out


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.variant == "tutorial":
        result = tutorial(args.data_dir, args.limit)
    elif args.variant == "kernels":
        result = kernels(args.data_dir, args.limit)
    elif args.variant == "warmup":
        result = warmup(args.data_dir, args.limit)
    elif args.variant == "inference":
        result = inference(args.run_dir, args.limit < 1000)
    elif args.variant == "examples":
        result = examples(args.data_dir, args.limit, 1 if args.limit < 1000 else 5)
    elif args.variant.startswith("fast-"):  # fast-<seed>: the fast recipe, at its default logging (full)
        result = runner(args.data_dir, args.limit, "full", "fast", args.run_dir, None, int(args.variant[5:]))
    else:
        log = {"vizkit-off": "off", "vizkit-full": "full", "default": "full"}[args.variant]
        config = None if args.variant == "default" else "001-net"
        epochs = 1 if args.variant != "default" else (2 if args.limit < 1000 else None)
        result = runner(args.data_dir, args.limit, log, config, args.run_dir, epochs)
    result["peak_rss_mb"] = peak_rss_mb()
    result["process_seconds"] = time.perf_counter() - start
    print("RESULT " + json.dumps(result))


# --- the parent: runs the children, takes medians, writes the results -----------------------------------


IN_PROCESS = False  # --smoke: every variant in this process; it checks that the code runs and measures nothing


def run_child(variant: str, data_dir: str, limit: int, run_dir: str = "") -> dict:
    if IN_PROCESS:  # a fresh process per variant costs seconds of imports, the point of measuring, not of --smoke
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            child(argparse.Namespace(variant=variant, data_dir=data_dir, limit=limit, run_dir=run_dir))
        stdout, returncode, stderr = out.getvalue(), 0, ""
    else:
        cmd = [sys.executable, __file__, "--variant", variant, "--data-dir", data_dir, "--limit", str(limit)]
        cmd += ["--run-dir", run_dir] if run_dir else []
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        stdout, returncode, stderr = proc.stdout, proc.returncode, proc.stderr
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise SystemExit(f"bench variant {variant} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="runs of a to e, k and w; medians are reported (default 5)")
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--smoke", action="store_true", help="one batch per variant: checks the script, measures nothing")
    p.add_argument("--out", help="results file (default: experiments/results/bench-<date>.json)")
    p.add_argument(
        "--only", choices=["all", "fast", "recipes"], default="all",
        help="fast: f and g alone; recipes: a to e, k and w alone",
    )  # fmt: skip
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=55_000, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        child(args)
        return 0

    global IN_PROCESS
    IN_PROCESS = args.smoke
    limit = 64 if args.smoke else 55_000
    repeats = 1 if args.smoke else args.repeats
    fast = None
    if args.only != "recipes":
        fast = fast_recipe(args.data_dir, 64 if args.smoke else 60_000, 1 if args.smoke else 5)
    if args.only == "fast":
        return write({"date": datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke,
                      "machine": machine(), "fast_recipe": fast}, args.out, "bench-fast")  # fmt: skip
    runs: dict[str, list[dict]] = {
        "a_tutorial": [], "b_vizkit_log_off": [], "c_vizkit_log_full": [], "d_inference": [], "k_model_kernels": []
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vizkit-bench-") as tmp:
        for r in range(repeats):
            # interleaved, so drift in the machine's speed hits every variant alike
            runs["a_tutorial"].append(run_child("tutorial", args.data_dir, limit))
            off_dir = f"{tmp}/off{r}"
            runs["b_vizkit_log_off"].append(run_child("vizkit-off", args.data_dir, limit, off_dir))
            runs["c_vizkit_log_full"].append(run_child("vizkit-full", args.data_dir, limit, f"{tmp}/full{r}"))
            runs["d_inference"].append(run_child("inference", args.data_dir, limit, off_dir))
            runs["k_model_kernels"].append(run_child("kernels", args.data_dir, limit))
            print(f"repeat {r + 1}/{repeats} done", file=sys.stderr)
        defaults, warmups = [], []
        for r in range(repeats):
            defaults.append(run_child("default", args.data_dir, limit, f"{tmp}/default{r}"))
            warmups.append(run_child("warmup", args.data_dir, limit))

    med = {k: median_of(v) for k, v in runs.items()}
    a, b, c, d = med["a_tutorial"], med["b_vizkit_log_off"], med["c_vizkit_log_full"], med["d_inference"]
    kern = med["k_model_kernels"]
    default = median_of(defaults)
    warm = median_of(warmups)

    def paired(top: str, bottom: str) -> float:  # the median of each repeat's own ratio
        return statistics.median(
            t["epoch_seconds"] / u["epoch_seconds"] for t, u in zip(runs[top], runs[bottom], strict=True)
        )

    # c/b with the training steps taken as equal (they differ by two Loss/step points an epoch): what logging
    # adds to the epoch, measured in each run, against b's whole epoch. The whole-epoch ratio above carries
    # the steps' own noise, 0.88 to 1.16 a repeat on this VM, which 5 repeats cannot narrow to 2%.
    added = statistics.median(
        (u["outside_steps_seconds"] - t["outside_steps_seconds"]) / t["epoch_seconds"]
        for t, u in zip(runs["b_vizkit_log_off"], runs["c_vizkit_log_full"], strict=True)
    )
    ratios = {
        "b_over_a_epoch_seconds": paired("b_vizkit_log_off", "a_tutorial"),
        "c_over_b_epoch_seconds": paired("c_vizkit_log_full", "b_vizkit_log_off"),
        "c_over_b_outside_steps": 1 + added,
        "k_over_a_epoch_seconds": paired("k_model_kernels", "a_tutorial"),
        "b_over_a_of_medians": b["epoch_seconds"] / a["epoch_seconds"],
        "c_over_b_of_medians": c["epoch_seconds"] / b["epoch_seconds"],
        "accuracy_b_minus_a_points": 100 * (b["test_accuracy"] - a["test_accuracy"]),
        "ort_over_torch_latency_batch1": d["onnxruntime_batch1_ms"] / d["torch_batch1_ms"],
        "ort_over_torch_latency_batch256": d["onnxruntime_batch256_ms"] / d["torch_batch256_ms"],
        "default_first_over_later_epochs": default["first_over_later_epochs"],
    }
    targets = {
        "b/a <= 0.25": ratios["b_over_a_epoch_seconds"] <= 0.25,
        "equal accuracy after one epoch (within 0.3 points)": abs(ratios["accuracy_b_minus_a_points"]) <= 0.3,
        "c/b <= 1.02": ratios["c_over_b_epoch_seconds"] <= 1.02,
        "c/b <= 1.02, steps taken as equal": ratios["c_over_b_outside_steps"] <= 1.02,
        "default recipe >= 99.0% within 60 s of training": default["test_accuracy"] >= 0.99
        and default["train_seconds"] <= 60,
        "default recipe's first epoch no slower than the later ones": ratios["default_first_over_later_epochs"] <= 1.0,
        f"default recipe's peak memory within 10% of {MEMORY_BEFORE_MB} MB": default["peak_rss_mb"]
        <= 1.1 * MEMORY_BEFORE_MB,
        "onnxruntime batch-1 latency <= half of torch's": ratios["ort_over_torch_latency_batch1"] <= 0.5,
        "onnxruntime at batch 256 at least as fast": ratios["ort_over_torch_latency_batch256"] <= 1.0,
    }
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "repeats": repeats,
        "machine": machine(),
        "medians": med,
        "default_recipe": default,
        "default_recipe_runs": defaults,
        "default_recipe_one_time_costs": {"medians": warm, "runs": warmups},
        "ratios": ratios,
        "targets_met": targets,
        "runs": runs,
        "fast_recipe": fast,
        "gpu": gpu_row(),
    }
    out = Path(args.out) if args.out else RESULTS / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print("| variant | epoch s | images/s | test acc | peak RSS MB |\n|---|---|---|---|---|")
    for name, m in (("a tutorial loop", a), ("b vizkit --log off", b), ("c vizkit --log full", c)):
        print(
            f"| {name} | {m['epoch_seconds']:.2f} | {m['images_per_second']:.0f} | "
            f"{100 * m['test_accuracy']:.2f}% | {m['peak_rss_mb']:.0f} |"
        )
    print(
        f"| k the model's forward and backward alone | {kern['epoch_seconds']:.2f} | "
        f"{64 * kern['steps'] / kern['epoch_seconds']:.0f} | - | {kern['peak_rss_mb']:.0f} |"
    )
    print("\nratios: " + ", ".join(f"{name} = {v:.3f}" for name, v in ratios.items()))
    if ratios["k_over_a_epoch_seconds"] > 0.25:
        print(
            f"b/a <= 0.25 is out of reach of an eager loop of this model at batch 64: its own forward and "
            f"backward alone take {ratios['k_over_a_epoch_seconds']:.3f}x the tutorial's epoch (k/a)"
        )
    print(
        f"inference ms (torch / onnxruntime): batch 1 {d['torch_batch1_ms']:.3f} / {d['onnxruntime_batch1_ms']:.3f}, "
        f"batch 256 {d['torch_batch256_ms']:.2f} / {d['onnxruntime_batch256_ms']:.2f}"
    )
    print(
        f"default recipe (medians of {repeats}): {100 * default['test_accuracy']:.2f}% after {default['epochs']} "
        f"epochs, {default['train_seconds']:.1f} s of training; first epoch {default['first_over_later_epochs']:.3f}x "
        f"the later ones; peak memory {default['peak_rss_mb']:.0f} MB (before issue 12: {MEMORY_BEFORE_MB} MB)"
    )
    print(
        f"default recipe's one-time costs (medians of {repeats}): first step {warm['first_step_ms']:.1f} ms against "
        f"{warm['median_step_ms']:.1f} ms; the last, smaller batch {warm['last_batch_first_ms']:.1f} ms the first "
        f"time, {warm['last_batch_again_ms']:.1f} ms again: {1000 * warm['one_time_seconds']:.0f} ms that only the "
        f"first epoch pays, {100 * warm['one_time_share']:.1f}% of its steps"
    )
    for name, ok in targets.items():
        print(f"  [{'met' if ok else 'MISSED'}] {name}")
    if fast is not None:
        print_fast(fast)
    print(f"GPU: {result['gpu']['note']}")
    print(f"results: {out}")
    return 0


def gpu_row() -> dict:
    """The GPU figures issue 12 asks for. None are measured without a CUDA device, and none are estimated."""
    import torch

    if not torch.cuda.is_available():
        return {"device": None, "note": "no CUDA device on this machine: no GPU figure was measured or estimated"}
    name = torch.cuda.get_device_name(0)
    return {"device": name, "note": f"{name} is present, but this script has no GPU variant yet: nothing measured"}


def fast_recipe(data_dir: str, limit: int, seeds: int) -> dict:
    """f and g: the fast recipe over seeds 0..seeds-1 (full logging), and pytorch/examples' loop, in one run."""
    with tempfile.TemporaryDirectory(prefix="vizkit-bench-fast-") as tmp:
        runs = [run_child(f"fast-{seed}", data_dir, limit, f"{tmp}/fast{seed}") for seed in range(seeds)]
    baseline = run_child("examples", data_dir, limit)
    accuracies = [r["test_accuracy"] for r in runs]
    train = [r["train_seconds"] for r in runs]
    # one epoch: the test accuracy after it is the run's, so a seed reaches 99.0% in its training time or never
    reached = [r["train_seconds"] for r in runs if r["test_accuracy"] >= 0.99]
    summary = {
        "seeds": seeds,
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_min": min(accuracies),
        "test_accuracy_max": max(accuracies),
        "train_seconds_median": statistics.median(train),
        "wall_seconds_median": statistics.median(r["wall_seconds"] for r in runs),
        "seeds_reaching_99": len(reached),
        "seconds_to_99_median": statistics.median(reached) if reached else None,
        "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
    }
    targets = {
        "fast: mean test accuracy >= 99.0% over the seeds": summary["test_accuracy_mean"] >= 0.99,
        "fast: median training time <= 10 s": summary["train_seconds_median"] <= 10,
    }
    return {"summary": summary, "targets_met": targets, "runs": runs, "pytorch_examples": baseline}


def print_fast(fast: dict) -> None:
    s, g = fast["summary"], fast["pytorch_examples"]
    print(
        f"fast recipe over {s['seeds']} seeds: test accuracy mean {100 * s['test_accuracy_mean']:.2f}% "
        f"(min {100 * s['test_accuracy_min']:.2f}%, max {100 * s['test_accuracy_max']:.2f}%), training "
        f"{s['train_seconds_median']:.1f} s median ({s['wall_seconds_median']:.1f} s with validation and logging); "
        f"{s['seeds_reaching_99']} of {s['seeds']} seeds reach 99.0%"
    )
    to99 = f"99.0% after {g['seconds_to_99']:.1f} s of training" if g["seconds_to_99"] else "no 99.0% in its epochs"
    print(
        f"pytorch/examples' loop: {to99}; per epoch: "
        + ", ".join(f"{e['epoch']}: {100 * e['test_accuracy']:.2f}% at {e['train_seconds']:.0f} s" for e in g["epochs"])
    )
    for name, ok in fast["targets_met"].items():
        print(f"  [{'met' if ok else 'MISSED'}] {name}")


def write(result: dict, out: str | None, stem: str) -> int:
    path = Path(out) if out else RESULTS / f"{stem}-{datetime.now():%Y%m%d}-cpu{os.cpu_count()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_fast(result["fast_recipe"])
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
