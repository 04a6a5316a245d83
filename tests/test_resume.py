"""Interruption, resume and divergence, with real signals to real training processes.

The kill tests SIGKILL a real `python -m vizkit.train` at chosen moments (KILLER patches one function to kill
its own process there) and resume it; the resumed run's event logs must equal an uninterrupted run's, tag by
tag and step by step, values included (timings aside)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit.checkpoint import read_checkpoint
from vizkit.train import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real training processes, signals and kills: minutes


def train_args(data_dir: Path, run_dir: Path) -> list[str]:
    args = ["--limit-train", "6000", "--epochs", "3", "--set", "log_every=5", "--data-dir", str(data_dir)]
    return args + ["--run-dir", str(run_dir)]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "vizkit.train", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 600) -> None:  # a slow or busy machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never printed {text!r}; stderr: {proc.stderr.read()[-2000:]}")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pth", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "whole"
    assert main(train_args(data_dir, run)) == 0
    return run


# SIGINT only: SIGTERM sets the same flag (engine.py's stop) and differs only in its exit code, 143, which the
# first-epoch test below checks; the Ctrl-C tests below and the SIGKILL chain cover the other moments
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130)], ids=["SIGINT"])
def test_signal_then_resume_equals_an_uninterrupted_run(uninterrupted, data_dir, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    err = proc.stderr.read()
    assert f"--resume {run}" in err and "Traceback" not in err
    assert read_checkpoint(run / "last.pth")["epoch"] == 1  # the abandoned epoch 2 left nothing behind
    EventAccumulator(str(run)).Reload()  # the event file was flushed and reads back

    assert main(["--resume", str(run)]) == 0
    a, b = weights(uninterrupted), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["test_accuracy"] == json.loads((uninterrupted / "metrics.json").read_text())["test_accuracy"]
    ea = EventAccumulator(str(run / "train"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("Loss")] == [1, 2, 3]
    steps = [e.step for e in ea.Scalars("Loss/step")]
    assert steps == sorted(set(steps))  # the interrupted epoch's points were dropped, not doubled


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_in_the_first_epoch_says_nothing_can_be_resumed_and_leaves_no_half_run(data_dir, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "total")  # the model's summary: the run directory is made and epoch 1 begins
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    err = proc.stderr.read()
    assert f"no epoch had finished, so nothing can be resumed; {run} was removed" in err and "Traceback" not in err
    assert not run.exists()


def test_ctrl_c_during_the_final_test_pass_and_export_exits_130_and_resumes(uninterrupted, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "epoch 3/3:")  # the last epoch is saved; the test pass and ONNX export come now
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=600) == 130
    assert "Traceback" not in proc.stderr.read()
    assert not (run / "metrics.json").exists()  # not marked finished
    assert read_checkpoint(run / "last.pth")["epoch"] == 3
    assert main(["--resume", str(run)]) == 0  # runs the final part again
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == json.loads((uninterrupted / "metrics.json").read_text())["test_accuracy"]
    assert (run / "model.onnx").is_file() and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_nan_loss_stops_with_the_step_and_lr(data_dir, tmp_path, capsys):
    argv = ["--model", "net", "--optimizer", "sgd", "--lr", "1e12", "--scheduler", "none", "--limit-train", "2000"]
    argv += ["--set", "log_every=1", "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "the loss became" in err and "at step" in err and "lr 1e+12" in err
    assert not (tmp_path / "r" / "last.pth").exists()  # nothing NaN was saved as a checkpoint


@pytest.mark.parametrize(
    "extra, message",
    [(["--lr", "0.1"], "leave out: lr"), (["--config", "001-net"], "leave out: config")],
)
def test_resume_keeps_the_runs_own_config(uninterrupted, extra, message, capsys):
    assert main(["--resume", str(uninterrupted), *extra]) == 2
    assert message in capsys.readouterr().err


def test_resume_of_a_finished_or_missing_run(uninterrupted, tmp_path, capsys):
    assert main(["--resume", str(uninterrupted)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_torchrun_two_processes(data_dir, tmp_path):
    # torchrun's own parser takes "--log" for an abbreviation of its --log-dir: --set log=... passes through
    common = ["--limit-train", "10000", "--epochs", "1", "--batch-size", "128", "--set", "log=scalars"]
    common += ["--data-dir", str(data_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vizkit.train"]
    result = subprocess.run(cmd + common + ["--run-dir", str(tmp_path / "ddp")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["processes"] == 2
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "ddp").values())
    assert main(common + ["--run-dir", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    print("test accuracy, 2 processes vs 1:", ddp["test_accuracy"], single["test_accuracy"])
    assert abs(ddp["test_accuracy"] - single["test_accuracy"]) <= 0.01


# --- SIGKILL at chosen moments ----------------------------------------------------------------------------

KILLER = r"""
import os, signal, sys
from pathlib import Path

moment, nth = sys.argv[1], int(sys.argv[2])
seen = [0]


def due():
    seen[0] += 1
    return seen[0] == nth


def die():
    os.kill(os.getpid(), signal.SIGKILL)


import vizkit.checkpoint, vizkit.run, vizkit.rundir, vizkit.writer

if moment == "step":  # mid-epoch, after the nth training step logged its loss
    step_loss = vizkit.run.Run.step_loss

    def patched(self, value, step):
        step_loss(self, value, step)
        if due():
            die()

    vizkit.run.Run.step_loss = patched
elif moment in ("writing", "written"):  # last.pth: half of its temporary on disk / just renamed into place
    atomic_write = vizkit.checkpoint.atomic_write

    def patched(path, write):
        if path.name != "last.pth" or not due():
            return atomic_write(path, write)
        if moment == "writing":
            tmp = path.with_name(f".last.pth.tmp-{os.getpid()}")
            write(tmp)
            os.truncate(tmp, tmp.stat().st_size // 2)
        else:
            atomic_write(path, write)
        die()

    vizkit.checkpoint.atomic_write = patched
elif moment == "test-pass":  # the test set's numbers and figures logged (and on disk), the run not finished
    evaluation = vizkit.writer._Tags.evaluation

    def patched(self, *args, **kwargs):
        evaluation(self, *args, **kwargs)
        self.flush()
        die()

    vizkit.writer._Tags.evaluation = patched
elif moment == "onnx":
    vizkit.run.export_onnx = lambda *args, **kwargs: die()
elif moment == "metrics":  # metrics.json renamed into place
    write_metrics = vizkit.rundir.write_metrics

    def patched(run_dir, metrics):
        write_metrics(run_dir, metrics)
        die()

    vizkit.rundir.write_metrics = patched
from vizkit.train import main

sys.exit(main(sys.argv[3:]))
"""
TIMINGS = ("seconds", "wall_seconds", "images_per_second", "train_seconds")


def small_args(data_dir: Path, run_dir: Path) -> list[str]:
    """lenet5 on 256 images, 2 steps an epoch, every step logged: seconds a run, and full logging."""
    args = ["--model", "lenet5", "--limit-train", "256", "--epochs", "3", "--set", "val_size=256"]
    return args + ["--set", "log_every=1", "--data-dir", str(data_dir), "--run-dir", str(run_dir)]


def killed(tmp_path: Path, moment: str, nth: int, argv: list[str]) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), moment, str(nth), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, f"{moment} {nth}: never reached ({proc.returncode}): {proc.stderr}"


def logged(run: Path, ignore: tuple[str, ...] = ()) -> dict[tuple[str, str], list]:
    """Every summary in every event log of a run (its own, train/, val/), by (sub-run, tag): the sorted
    (step, value) pairs, as TensorBoard's own loader reads the files; a timing's value is left out."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: dict[tuple[str, str], list] = {}
    for sub in ("", "train", "val"):
        for path in sorted((run / sub).glob("events.out.tfevents.*")):
            for event in EventFileLoader(str(path)).Load():
                what = event.WhichOneof("what")
                if what == "summary":
                    for v in event.summary.value:
                        if v.tag not in ignore:
                            found.setdefault((sub, v.tag), []).append((event.step, _value(v)))
                elif what == "graph_def":
                    found.setdefault((sub, "graph"), []).append((event.step, _graph(event.graph_def)))
    return {k: sorted(v, key=lambda sv: (sv[0], sv[1] or b"")) for k, v in found.items()}


def _graph(serialized: bytes) -> bytes:
    """add_graph's nodes, by op and name without the number torch.jit gives each value (it counts every trace
    the process made before)."""
    from tensorboard.compat.proto.graph_pb2 import GraphDef

    nodes = GraphDef.FromString(serialized).node
    return repr(sorted((n.op, re.sub(r"/\d+$", "", n.name), list(n.input) and len(n.input)) for n in nodes)).encode()


def _value(v) -> bytes | None:  # noqa: ANN001
    if v.tag.startswith("speed/"):
        return None
    if v.tag == "__run_graph__":  # the loader's form of add_graph's GraphDef
        return _graph(v.tensor.string_val[0])
    if v.tag.startswith("_hparams_/"):  # a protobuf map: the same entries may be serialised in another order
        from google.protobuf import json_format
        from tensorboard.plugins.hparams import plugin_data_pb2

        data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
        return json.dumps(json_format.MessageToDict(data), sort_keys=True).encode()
    return v.SerializeToString()


def same_run(run: Path, whole: Path, ignore: tuple[str, ...] = ()) -> None:
    a, b = logged(run, ignore), logged(whole, ignore)
    assert sorted(a) == sorted(b)
    for key in b:
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], f"{key}: steps differ"
        assert a[key] == b[key], f"{key}: values differ"
    assert (run / "projector_config.pbtxt").read_text() == (whole / "projector_config.pbtxt").read_text()
    one, other = (json.loads((r / "metrics.json").read_text()) for r in (run, whole))
    for m in (one, other):
        m.pop("train_seconds")
        m["history"] = [{k: v for k, v in h.items() if k not in TIMINGS} for h in m["history"]]
    assert one == other
    x, y = weights(run), weights(whole)
    assert all(torch.equal(x[k], y[k]) for k in y)


@pytest.fixture(scope="module")
def small_whole(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted small run, trained at the path the killed runs use and then moved beside it (the
    config text in its log names that path)."""
    top = tmp_path_factory.mktemp("kills")
    assert main(small_args(data_dir, top / "run")) == 0
    (top / "run").rename(top / "whole")
    return top / "whole"


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(small_whole, data_dir):
    run = small_whole.parent / "run"
    assert not run.exists()
    try:
        argv = small_args(data_dir, run)
        resume = ["--resume", str(run)]
        killed(run.parent, "step", 1, argv)  # in epoch 1: nothing finished, so --resume starts it again
        assert not (run / "last.pth").exists()
        killed(run.parent, "step", 3, resume)  # from the start; killed in epoch 2, after its first step
        assert read_checkpoint(run / "last.pth")["epoch"] == 1
        killed(run.parent, "writing", 1, resume)  # epoch 2's last.pth half written
        assert read_checkpoint(run / "last.pth")["epoch"] == 1 and list(run.glob(".last.pth.tmp-*"))
        killed(run.parent, "written", 1, resume)  # right after epoch 2's last.pth
        assert read_checkpoint(run / "last.pth")["epoch"] == 2 and not list(run.glob(".last.pth.tmp-*"))
        killed(run.parent, "test-pass", 1, resume)  # epoch 3, then the test pass, logged
        killed(run.parent, "onnx", 1, resume)  # the final stage again, killed in the export
        assert not (run / "metrics.json").exists()
        killed(run.parent, "metrics", 1, resume)  # the final stage again, killed once metrics.json is written
        assert main(resume) == 2  # finished: nothing to resume
        same_run(run, small_whole)
    finally:
        shutil.rmtree(run, ignore_errors=True)  # the next test trains at this path too


@pytest.mark.slow
def test_two_resumes_at_once_one_writes_the_other_is_refused(small_whole, data_dir):
    run = small_whole.parent / "run"
    try:
        killed(run.parent, "step", 3, small_args(data_dir, run))  # epoch 1 saved
        both = [start(["--resume", str(run)]) for _ in range(2)]
        results = sorted((p.wait(timeout=300), p.stderr.read()) for p in both)
        (ok, _), (refused, err) = results
        assert (ok, refused) == (0, 2)
        assert "is being written by another process (pid" in err and len(err.strip().splitlines()) == 1
        same_run(run, small_whole)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _can_mount() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs root on Linux")
def test_a_full_disk_stops_training_in_one_line_and_resumes_once_freed(small_whole, data_dir, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)]).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        run = disk / "run"
        began = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "vizkit.train", *small_args(data_dir, run)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 2 and time.monotonic() - began < 120
        err = proc.stderr.strip()  # lenet5 has no ReLU: a warning says so first
        assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
        assert "Traceback" not in err, err
        assert f"the disk holding {run} (mounted at {disk}) is full (No space left on device)" in err
        if (run / "last.pth").exists():  # the last good epoch, whole
            assert f"epoch {read_checkpoint(run / 'last.pth')['epoch']} is saved" in err
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        assert main(["--resume", str(run)]) == 0
        same_run(run, small_whole, ignore=("config/text_summary",))  # its config text names another run directory
    finally:
        subprocess.run(["umount", "-l", str(disk)])
