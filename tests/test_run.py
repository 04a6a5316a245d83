"""Run, the API a hand-written loop calls: known answers on a tiny model, and tutorial 001's own loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torch_device
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from vizkit import Run, explain, features, netron_view, predict, report, rundir
from vizkit.checkpoint import read_checkpoint
from vizkit.errors import VizkitError

REPO = Path(__file__).resolve().parents[1]


class Sign(nn.Module):
    """Class 0 when the image is positive, class 1 when negative: logits (+s, -s) with s the pixel sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(1)
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.relu(x)  # a ReLU for the activation statistics; its result is not used
        return self.fc(self.conv(x).sum(dim=(1, 2, 3)).unsqueeze(1))


def images(signs: list[float]) -> torch.Tensor:
    return torch.stack([torch.full((1, 4, 4), float(s)) for s in signs])


def test_run_evaluates_a_known_model_and_writes_the_run(tmp_path):
    model = Sign().to(torch_device())  # VIZKIT_TEST_DEVICE=cuda: the same known answers from a model on the GPU
    model.bn.eval()  # frozen on purpose: Run must leave it so
    model.train()
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # labels 0, 0, 1, 1 for signs +, -, -, +: predictions 0, 1, 1, 0, so one right in each row (CPU batches,
    # as a DataLoader gives them)
    loader = [(images([1, -1]), torch.tensor([0, 0])), (images([-1, 1]), torch.tensor([1, 1]))]
    with Run(model, images([1, -1, 1]), run_dir=tmp_path / "run", classes=["pos", "neg"], log="full") as run:
        row = run.epoch(train_loss=0.5, val_loader=loader)
        assert row["val_accuracy"] == 0.5
        result = run.evaluate(loader)
    assert result["confusion_matrix"] == [[1, 1], [1, 1]] and result["per_class_accuracy"] == [0.5, 0.5]
    # 4 px of +-1: logits (+-16, -+16); a right answer has loss ~0, a wrong one 32
    assert result["test_loss"] == pytest.approx(16.0, rel=1e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == 0.5 and metrics["history"][0]["train_loss"] == 0.5
    assert metrics["dataset"] is None and metrics["model"] == "test_run:Sign"  # module:NAME, as pytest imported it
    for name in ("best.pth", "last.pth", "model.onnx", "curves.png", "confusion_matrix.png", "top_losses.png"):
        assert (tmp_path / "run" / name).is_file(), name
    ckpt = read_checkpoint(tmp_path / "run" / "best.pth")
    assert ckpt["input_shape"] == [1, 4, 4] and ckpt["mean"] == [0.0] and ckpt["classes"] == ["pos", "neg"]
    # the model as it was: weights, each module's own mode, no hooks, no gradients
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model.bn.training and model.conv.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    ea = EventAccumulator(str(tmp_path / "run" / "val"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.value for e in ea.Scalars("Accuracy")] == [0.5]
    ea = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    assert ea.Scalars("activations/relu/dead_fraction")[0].value == 0.0  # the + images pass it
    assert "features/conv" in ea.Tags()["images"]


def test_run_that_raises_is_not_marked_finished(tmp_path):
    with pytest.raises(RuntimeError), Run(Sign(), images([1]), run_dir=tmp_path / "run", log="off") as run:
        run.epoch(val_loss=1.0)
        raise RuntimeError("the loop broke")
    assert (tmp_path / "run" / "last.pth").is_file() and not (tmp_path / "run" / "metrics.json").exists()


def test_a_run_that_raises_before_its_first_epoch_leaves_nothing(tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt), Run(Sign(), images([1]), run_dir=tmp_path / "run") as run:
        run.step(1.0)
        raise KeyboardInterrupt  # Ctrl-C in the first epoch: nothing to keep or resume
    assert not (tmp_path / "run").exists() and "no epoch finished" in caplog.text


def test_every_run_lists_the_same_hparams_columns(tmp_path):
    """TensorBoard takes the columns from whichever run it reads first: a run from a person's loop (no config)
    must not hide the settings of vizkit.train's runs, nor the other way round."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    loader = [(images([1, -1]), torch.tensor([0, 1]))]
    for name, config in (("loop", None), ("train", {"lr": 0.5, "optimizer": "sgd", "augment": True})):
        with Run(Sign(), images([1]), run_dir=tmp_path / name, config=config, log="scalars") as run:
            run.epoch(val_loader=loader)
            run.evaluate(loader)
    columns, values = {}, {}
    for name in ("loop", "train"):
        for path in (tmp_path / name).glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(path)).Load():
                for v in event.summary.value:
                    if v.tag == metadata.EXPERIMENT_TAG:
                        exp = metadata.parse_experiment_plugin_data(v.metadata.plugin_data.content)
                        columns[name] = [h.name for h in exp.hparam_infos]
                        metrics = [m.name.tag for m in exp.metric_infos]
                    if v.tag == metadata.SESSION_START_INFO_TAG:
                        start = metadata.parse_session_start_info_plugin_data(v.metadata.plugin_data.content)
                        values[name] = set(start.hparams)
    assert columns["loop"] == columns["train"] and {"lr", "optimizer", "augment", "model", "mean"} <= set(
        columns["train"]
    )
    assert metrics == ["hparam/test_accuracy", "hparam/test_loss", "hparam/best_val_accuracy"]
    assert values["loop"] == {"model", "mean", "std"} and {"lr", "optimizer", "augment"} <= values["train"]


def test_run_dir_must_be_new_or_empty(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("mine")
    with pytest.raises(VizkitError, match="not empty"):
        Run(Sign(), images([1]), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "x").read_text() == "mine"


def test_step_gives_the_train_loss_curve(tmp_path):
    with Run(Sign(), images([1]), run_dir=tmp_path / "run", log="scalars", log_every=2) as run:
        for loss in (1.0, 3.0, 5.0):
            run.step(torch.tensor(loss))
        assert run.epoch()["train_loss"] == 3.0
    ea = EventAccumulator(str(tmp_path / "run" / "train"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("Loss/step")] == [(2, 2.0)]


@pytest.fixture(scope="module")
def own_loop_run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("own") / "run"
    cmd = [sys.executable, str(REPO / "experiments" / "own_loop.py"), "--epochs", "2", "--limit-train", "3000",
           "--limit-test", "2000", "--data-dir", str(data_dir), "--run-dir", str(run)]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path_factory.mktemp("cwd"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Accuracy of the network on the test images" in done.stdout  # the tutorial's own output is kept
    return run


def test_own_loop_adds_four_lines_to_tutorial_001():
    lines = (REPO / "experiments" / "own_loop.py").read_text().splitlines()
    assert len([line for line in lines if line.rstrip().endswith("# vizkit")]) == 4


@pytest.mark.slow  # a hand-written loop trained for 2 epochs first (the fixture, about 20 s)
def test_own_loop_leaves_what_the_runner_leaves(own_loop_run):
    for name in ("best.pth", "last.pth", "model.onnx", "metrics.json", "curves.png", "confusion_matrix.png",
                 "top_losses.png", "source/own_loop.py"):  # fmt: skip
        assert (own_loop_run / name).is_file(), name
    metrics = json.loads((own_loop_run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["test_accuracy"] > 0.5
    ckpt = read_checkpoint(own_loop_run / "best.pth")
    assert ckpt["mean"] == [0.1307] and ckpt["dataset"] == "mnist" and ckpt["model"].endswith("own_loop.py:Net")
    ea = EventAccumulator(str(own_loop_run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    assert "speed/epoch_seconds" in tags["scalars"]
    val = EventAccumulator(str(own_loop_run / "val"), size_guidance={"scalars": 0})
    val.Reload()
    assert [e.step for e in val.Scalars("Loss")] == [1, 2] and [e.step for e in val.Scalars("Accuracy")] == [1, 2]
    assert {"features/conv1", "features/conv2", "eval/confusion_matrix"} <= set(tags["images"])
    assert "weights/conv1.weight" in tags["histograms"] and tags["graph"]
    assert "activations/ReLU/dead_fraction" in tags["scalars"]
    assert len([t for t in tags["scalars"] if t.startswith("per_class_accuracy/")]) == 10


@pytest.mark.slow  # a hand-written loop trained for 2 epochs first (the fixture, about 20 s)
def test_every_command_opens_the_own_loop_run(own_loop_run, data_dir, tmp_path, capsys):
    run, dd = str(own_loop_run), ["--data-dir", str(data_dir)]
    assert features.main(["--run", run, "--layer", "conv2", "--out", str(tmp_path / "f.png"), *dd]) == 0
    assert explain.main(["--run", run, "--index", "1", "--out", str(tmp_path / "e.png"), *dd]) == 0
    from vizkit.data import load_test_split

    pixels = 255 - load_test_split("mnist", data_dir).images[0, 0].numpy()
    Image.fromarray(pixels).resize((90, 90)).save(tmp_path / "digit.png")
    assert predict.main(["--run", run, str(tmp_path / "digit.png")]) == 0
    assert netron_view.onnx_for(run, tmp_path).name == "model.onnx"
    assert report.main([run, "--out", str(tmp_path / "r.html"), *dd]) == 0
    assert "conv2" in (tmp_path / "r.html").read_text()


def test_resume_removes_what_a_killed_writer_left(tmp_path):
    run_dir = tmp_path / "run"
    with Run(Sign(), images([1]), run_dir=run_dir, log="off") as run:
        run.epoch(val_loss=1.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: as a process killed with SIGKILL mid-write leaves it
    stale = run_dir / f".last.pth.tmp-{dead.pid}"
    live = run_dir / f".best.pth.tmp-{os.getpid()}"  # a writer still running (this one) is left alone
    for f in (stale, live):
        f.write_bytes(b"half a checkpoint")
    rundir.reopen(run_dir, {})
    rundir.release(run_dir)
    assert not stale.exists() and live.exists()
    assert (run_dir / "last.pth").is_file()
