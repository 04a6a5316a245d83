"""Where a training epoch's time goes, and what each change tried for issue 12 bought.

    python experiments/profile_epoch.py          # about 5 minutes on 2 cores; writes experiments/results/
    python experiments/profile_epoch.py --smoke  # a few steps of each part (no torch.compile): does it still run?

Parts (each in its own process, so one part's warm-up or allocator state is not another's):
  epoch    recipe 001 for two epochs with --log off and --log full: the seconds of each part of an epoch
           (training steps, validation, feature maps, histograms, activation statistics, checkpoints), by timers
           around vizkit's own functions, and the logging that --log full adds, before and after this change
  steps    recipe 001's training step split into data, forward, loss, backward, optimizer and bookkeeping, the
           operators torch.profiler finds by self time, and the step of a batch of one (the fixed cost)
  first    the default recipe's first epoch against its second: ms and page faults per step with glibc's
           default thresholds and with allocator.keep_freed_memory(), as engine.fit now calls it
  options  what else was tried, side by side in one process: blocks of steps alternate between the variants,
           so the machine's drift (this VM's speed moves 20% within a minute) hits all alike
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
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
NORM = ((0.1307,), (0.3081,))


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --- epoch: timers around vizkit's own functions, in a real `vizkit.train` run ---------------------------


def epoch_part(data_dir: str, log: str, smoke: bool) -> dict:
    import vizkit.analysis as analysis
    import vizkit.engine as engine
    import vizkit.run as run
    from vizkit.train import main
    from vizkit.writer import Writer

    spent: dict[str, list[float]] = {}  # part -> seconds in each epoch

    def timed(owner: object, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            if key == "training steps":
                for seconds in spent.values():
                    seconds.append(0.0)  # a new epoch begins
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                epochs = len(spent.get("training steps", [0.0]))
                spent.setdefault(key, [0.0] * epochs)[-1] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(engine, "train_one_epoch", "training steps")
    timed(engine, "evaluate", "validation")
    timed(run.Run, "epoch", "Run.epoch (all of it)")
    timed(run, "save_checkpoint", "checkpoints")
    timed(run, "step_outputs", "feature maps")
    timed(Writer, "feature_maps", "feature maps")
    timed(analysis, "parameter_histograms", "histograms")
    timed(Writer, "histograms", "histograms")
    timed(run, "activation_stats", "activation statistics")
    timed(Writer, "activations", "activation statistics")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--config", "001-net", "--epochs", "2", "--log", log, "--data-dir", data_dir, "--run-dir", f"{tmp}/r"]
        argv += ["--limit-train", "640"] if smoke else []
        if main(argv) != 0:
            raise SystemExit("vizkit.train failed")
        history = json.loads(Path(f"{tmp}/r/metrics.json").read_text())["history"]
    return {"wall_seconds": [h["wall_seconds"] for h in history], "seconds_by_part": spent}


def logging_costs(smoke: bool) -> dict:
    """--log full's per-epoch extras for recipe 001's model, histograms before (tensorboardX's add_histogram)
    and after this change; medians of repeated calls in milliseconds."""
    import torch
    import torch.nn.functional as F
    from tensorboardX import SummaryWriter

    from vizkit.analysis import activation_stats, parameter_histograms
    from vizkit.graph import forward_graph, step_outputs
    from vizkit.models import get_model
    from vizkit.tiles import layer_image
    from vizkit.writer import Writer

    torch.manual_seed(0)
    model = get_model("net", 1, 28, 10).to(memory_format=torch.channels_last)
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x[:64]), torch.randint(0, 10, (64,))).backward()

    with tempfile.TemporaryDirectory() as tmp:
        writer, logger = SummaryWriter(f"{tmp}/old"), Writer(f"{tmp}/new")

        def old_histograms() -> None:
            for name, param in model.named_parameters():
                writer.add_histogram(f"weights/{name}", param.detach().cpu(), 1)
                writer.add_histogram(f"grads/{name}", param.grad.detach().cpu(), 1)

        maps = step_outputs(model, forward_graph(model, [1, 28, 28]).names("conv"), x[:1])
        calls = {
            "histograms, before (tensorboardX add_histogram)": old_histograms,
            "histograms, after (torch.histc, add_histogram_raw)": lambda: logger.histograms(
                parameter_histograms(model), 1
            ),
            "activation statistics (unchanged)": lambda: activation_stats(model, x),
            "feature maps (unchanged)": lambda: logger.feature_maps(
                {n: layer_image(a[0], n) for n, a in maps.items()}, 1
            ),
        }
        out = {name: median_ms(fn, 3 if smoke else 21) for name, fn in calls.items()}
        writer.close()
        logger.close()
    return out


def median_ms(fn, n: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# --- steps: recipe 001's step, phase by phase, and by operator --------------------------------------------


def steps_part(data_dir: str, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from vizkit.allocator import keep_freed_memory
    from vizkit.data import batches, load_dataset
    from vizkit.models import get_model

    keep_freed_memory()
    data = load_dataset("mnist", data_dir, limit_train=0)
    layout = torch.channels_last
    torch.manual_seed(0)
    model = get_model("net", 1, 28, 10).to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    gen = torch.Generator().manual_seed(0)

    def endless():  # noqa: ANN202
        while True:
            yield from batches(data.train, 64, *NORM, shuffle=True, generator=gen, memory_format=layout)

    it = endless()
    n = 20 if smoke else 400
    losses = torch.zeros(n + 100)
    hits = torch.zeros(n + 100, dtype=torch.int64)
    phases = dict.fromkeys(("data", "forward", "loss", "zero_grad", "backward", "optimizer", "bookkeeping"), 0.0)

    def step(i: int, clock: bool) -> None:
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        logits = model(x)
        t2 = time.perf_counter()
        loss = F.cross_entropy(logits, y)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        opt.step()
        t6 = time.perf_counter()
        losses[i] = loss.detach()
        hits[i] = (logits.detach().argmax(1) == y).sum()
        t7 = time.perf_counter()
        if clock:
            for key, a, b in zip(phases, (t0, t1, t2, t3, t4, t5, t6), (t1, t2, t3, t4, t5, t6, t7), strict=True):
                phases[key] += b - a

    model.train()
    for i in range(5 if smoke else 50):
        step(i, False)
    for i in range(n):
        step(i, True)
    ms = {k: 1000 * v / n for k, v in phases.items()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(5 if smoke else 100):
            step(i, False)
    table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in table)
    ops = [{"op": e.key, "self_share": e.self_cpu_time_total / total, "calls_per_step": e.count / (5 if smoke else 100)}
           for e in table[:12]]  # fmt: skip

    one = get_model("net", 1, 28, 10).to(memory_format=layout)
    one_opt = torch.optim.SGD(one.parameters(), lr=0.01, momentum=0.5)
    x1, y1 = torch.randn(1, 1, 28, 28).contiguous(memory_format=layout), torch.tensor([3])

    def step_of_one() -> None:
        one_opt.zero_grad(set_to_none=True)
        F.cross_entropy(one(x1), y1).backward()
        one_opt.step()

    return {
        "ms_per_step": ms,
        "ms_per_step_total": sum(ms.values()),
        "top_ops_by_self_time": ops,
        "ms_per_step_batch_of_one": median_ms(step_of_one, 20 if smoke else 300),
    }


# --- first: the default recipe's first epoch against its second -------------------------------------------


def first_part(data_dir: str, keep: bool, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from vizkit.allocator import keep_freed_memory
    from vizkit.data import batches, load_dataset
    from vizkit.engine import evaluate
    from vizkit.models import get_model

    kept = keep_freed_memory() if keep else None
    data = load_dataset("mnist", data_dir)
    layout = torch.channels_last
    torch.manual_seed(0)
    model = get_model("vizkit", 1, 28, 10).to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    gen = torch.Generator().manual_seed(0)
    n = 10 if smoke else 200

    def steps() -> dict:
        model.train()
        it = batches(data.train, 128, *NORM, shuffle=True, generator=gen, memory_format=layout)
        f0, t0 = faults(), time.perf_counter()
        for _ in range(n):
            x, y = next(it)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return {"ms_per_step": 1000 * (time.perf_counter() - t0) / n, "faults_per_step": (faults() - f0) / n}

    first = steps()
    t0 = time.perf_counter()
    evaluate(model, data.val, 1000, NORM, layout=layout)  # what ends every epoch, 1000 images at a time
    validation = time.perf_counter() - t0
    second = steps()
    return {"keep_freed_memory": kept, "first_epoch": first, "validation_seconds": validation, "second_epoch": second}


# --- options: what else was tried, interleaved in one process ---------------------------------------------


def options_part(data_dir: str, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from vizkit.allocator import keep_freed_memory
    from vizkit.data import batches, load_dataset
    from vizkit.models import get_model

    keep_freed_memory()
    data = load_dataset("mnist", data_dir)
    layout = torch.channels_last
    torch.manual_seed(0)
    base = get_model("net", 1, 28, 10).to(memory_format=layout)
    # name: (SGD's keywords, what it does to the numbers trained)
    variants = {
        "this change: loss and hits into slots (7 small ops a step)": ({}, "unchanged"),
        "before: running sums and a NaN check (13 small ops a step)": ({}, "unchanged"),
        "SGD foreach=True": ({"foreach": True}, "not checked"),
        "SGD fused=True": ({"fused": True}, "not checked"),
        "flush denormals": ({}, "not checked"),
        "bf16 autocast": ({}, "changed: bf16 convolutions"),
        "one thread": ({}, "not checked"),
        "NCHW in place of NHWC": ({}, "not checked"),
        "PyTorch's own convolutions (oneDNN off)": ({}, "not checked"),
    }
    own_layout = {"NCHW in place of NHWC": torch.contiguous_format}
    state = {}
    for name, (kw, _) in variants.items():
        model = copy.deepcopy(base).to(memory_format=own_layout.get(name, layout))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5, **kw)
        gen = torch.Generator().manual_seed(0)
        state[name] = {"model": model, "opt": opt, "gen": gen, "seconds": 0.0, "steps": 0, "it": None}
    block, rounds = (5, 2) if smoke else (40, 12)
    threads = torch.get_num_threads()
    losses = torch.zeros(block)
    hits = torch.zeros(block, dtype=torch.int64)
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            s = state[name]
            model, opt = s["model"], s["opt"]
            torch.set_flush_denormal(name == "flush denormals")
            torch.set_num_threads(1 if name == "one thread" else threads)
            if s["it"] is None:
                s["it"] = batches(data.train, 64, *NORM, shuffle=True, generator=s["gen"],
                                  memory_format=own_layout.get(name, layout))  # fmt: skip
            sums = [
                torch.zeros(()),
                torch.zeros((), dtype=torch.int64),
                torch.zeros(()),
                torch.zeros((), dtype=torch.int64),
            ]
            torch.backends.mkldnn.enabled = not name.startswith("PyTorch's own")
            start = time.perf_counter()
            for i in range(block):
                x, y = next(s["it"])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16 autocast"):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if name.startswith("before"):
                    batch_loss = loss.detach()
                    sums[0] += batch_loss * len(y)
                    sums[1] += (logits.detach().argmax(1) == y).sum()
                    sums[2] += batch_loss
                    sums[3] = torch.where((sums[3] == 0) & ~torch.isfinite(batch_loss), i + 1, sums[3])
                else:
                    losses[i] = loss.detach()
                    hits[i] = (logits.detach().argmax(1) == y).sum()
            s["seconds"] += time.perf_counter() - start
            s["steps"] += block
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = True
    reference = state[next(iter(variants))]
    ref_ms = 1000 * reference["seconds"] / reference["steps"]
    out = {}
    for name, (_, numbers) in variants.items():
        ms = 1000 * state[name]["seconds"] / state[name]["steps"]
        out[name] = {"ms_per_step": ms, "ratio": ms / ref_ms, "numbers": numbers}
    # --smoke leaves torch.compile out: its compiling alone takes most of a minute on 2 cores
    out["torch.compile (inductor)"] = compile_option(data, smoke) if not smoke else {"skipped": "--smoke"}
    return out


def compile_option(data, smoke: bool) -> dict:  # noqa: ANN001
    """torch.compile's first step (the compilation, paid inside the first epoch) and its steady step."""
    import torch
    import torch.nn.functional as F

    from vizkit.data import batches
    from vizkit.models import get_model

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vizkit-inductor-")  # a cold compile, as a user's
    layout = torch.channels_last
    torch.manual_seed(0)
    eager = get_model("net", 1, 28, 10).to(memory_format=layout)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    it = batches(data.train, 64, *NORM, shuffle=True, generator=torch.Generator().manual_seed(0), memory_format=layout)
    x, y = next(it)
    pairs = {"eager": (eager, torch.optim.SGD(eager.parameters(), lr=0.01, momentum=0.5)),
             "compiled": (compiled, torch.optim.SGD(compiled_model.parameters(), lr=0.01, momentum=0.5))}  # fmt: skip

    def step(name: str) -> None:
        model, opt = pairs[name]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    start = time.perf_counter()
    step("compiled")
    compile_seconds = time.perf_counter() - start
    n = 5 if smoke else 100
    spent = {"eager": 0.0, "compiled": 0.0}
    for r in range(2 if smoke else 6):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            start = time.perf_counter()
            for _ in range(n):
                step(name)
            spent[name] += time.perf_counter() - start
    return {
        "first_step_seconds_compiling": compile_seconds,
        "ms_per_step": 1000 * spent["compiled"] / (n * (2 if smoke else 6)),
        "ratio": spent["compiled"] / spent["eager"],
        "numbers": "not checked",
    }


# --- the parent --------------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    part, smoke = args.part, args.smoke
    if part in ("epoch-off", "epoch-full"):
        result = epoch_part(args.data_dir, part.split("-")[1], smoke)
    elif part == "logging":
        result = logging_costs(smoke)
    elif part == "steps":
        result = steps_part(args.data_dir, smoke)
    elif part in ("first-default", "first-kept"):
        result = first_part(args.data_dir, part == "first-kept", smoke)
    else:
        result = options_part(args.data_dir, smoke)
    print("RESULT " + json.dumps(result))


def run_child(part: str, data_dir: str, smoke: bool) -> dict:
    if smoke and not part.startswith("first-"):  # --smoke checks the code runs: no fresh process's imports to pay
        out = io.StringIO()  # (the first-* parts set the allocator before torch loads: they need their own)
        with contextlib.redirect_stdout(out):
            child(argparse.Namespace(part=part, data_dir=data_dir, smoke=smoke))
        stdout, returncode, stderr = out.getvalue(), 0, ""
    else:
        cmd = [sys.executable, __file__, "--part", part, "--data-dir", data_dir] + (["--smoke"] if smoke else [])
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        stdout, returncode, stderr = proc.stdout, proc.returncode, proc.stderr
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise SystemExit(f"profile part {part} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--smoke", action="store_true", help="a few steps of each part: checks the script, measures nothing")
    p.add_argument("--out", help="results file (default: experiments/results/profile-<date>-cpu<N>.json)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        child(args)
        return 0
    import torch

    parts = ["epoch-off", "epoch-full", "logging", "steps", "first-default", "first-kept", "options"]
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }
    for part in parts:
        result[part] = run_child(part, args.data_dir, args.smoke)
        print(f"{part} done", file=sys.stderr)
    out = Path(args.out) if args.out else RESULTS / f"profile-{datetime.now():%Y%m%d}-cpu{os.cpu_count()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"results: {out}")
    return 0


def report(r: dict) -> None:
    for log in ("off", "full"):
        e = r[f"epoch-{log}"]
        parts = ", ".join(f"{k} {' / '.join(f'{v:.3f}' for v in vs)}" for k, vs in e["seconds_by_part"].items())
        print(f"recipe 001 --log {log}: epoch wall s {' / '.join(f'{v:.2f}' for v in e['wall_seconds'])}; {parts}")
    print("--log full's extras, ms an epoch: " + ", ".join(f"{k} {v:.1f}" for k, v in r["logging"].items()))
    s = r["steps"]
    print(
        f"recipe 001 step {s['ms_per_step_total']:.2f} ms: "
        + ", ".join(f"{k} {v:.2f}" for k, v in s["ms_per_step"].items())
        + f"; a batch of one {s['ms_per_step_batch_of_one']:.2f} ms"
    )
    print(
        "top operators: " + ", ".join(f"{o['op']} {100 * o['self_share']:.0f}%" for o in s["top_ops_by_self_time"][:6])
    )
    for mode in ("default", "kept"):
        f = r[f"first-{mode}"]
        one, two = f["first_epoch"], f["second_epoch"]
        print(
            f"default recipe, allocator {mode}: first epoch {one['ms_per_step']:.1f} ms/step "
            f"({one['faults_per_step']:.0f} faults), second {two['ms_per_step']:.1f} ms/step "
            f"({two['faults_per_step']:.0f} faults); validation {f['validation_seconds']:.2f} s"
        )
    for name, o in r["options"].items():
        if "skipped" in o:
            print(f"  {name}: left out ({o['skipped']})")
            continue
        extra = f", compiling {o['first_step_seconds_compiling']:.1f} s" if "first_step_seconds_compiling" in o else ""
        print(f"  {name}: {o['ms_per_step']:.2f} ms/step, {o['ratio']:.3f}x{extra}")


if __name__ == "__main__":
    sys.exit(main())
