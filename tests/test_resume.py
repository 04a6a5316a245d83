"""Interruption, resume and divergence, with real signals to real training processes."""

import json
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


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
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


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_then_resume_equals_an_uninterrupted_run(uninterrupted, data_dir, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
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


def test_ctrl_c_during_the_final_test_pass_and_export_exits_130_and_resumes(uninterrupted, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "epoch 3/3:")  # the last epoch is saved; the test pass and ONNX export come now
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "Traceback" not in proc.stderr.read()
    assert not (run / "metrics.json").exists()  # not marked finished
    assert read_checkpoint(run / "last.pth")["epoch"] == 3
    assert main(["--resume", str(run)]) == 0  # runs the final part again
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == json.loads((uninterrupted / "metrics.json").read_text())["test_accuracy"]
    assert (run / "model.onnx").is_file() and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_sigkill_leaves_whole_files_and_resumes(data_dir, tmp_path):
    run = tmp_path / "run"
    proc = start(train_args(data_dir, run))
    wait_for_line(proc, "epoch 2/3")  # epoch 1's files are on disk; epoch 2's are being written
    proc.kill()
    proc.wait(timeout=30)
    assert read_checkpoint(run / "last.pth")["epoch"] in (1, 2)  # whichever it is, it is whole
    assert main(["--resume", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["history"][-1]["epoch"] == 3


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
