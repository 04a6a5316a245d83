import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit.checkpoint import open_checkpoint
from vizkit.config import tomllib
from vizkit.train import main

REPO = Path(__file__).resolve().parents[1]


def accumulator(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_run_directory_holds_everything(small_run):
    for name in ("config.toml", "last.pth", "best.pth", "model.onnx", "metrics.json", "curves.png"):
        assert (small_run / name).is_file(), name
    assert len(list(small_run.glob("events.out.tfevents.*"))) == 1
    # hparams did not open a subfolder (features/ comes from vizkit.features, where a test wrote figures into
    # this run first; 0000N/ holds the projector's embedding)
    # train/ and val/ are the sub-runs whose curves share a chart
    assert {p.name for p in small_run.iterdir() if p.is_dir()} <= {
        "features",
        "00002",
        "train",
        "val",
        "examples",
        "epochs",
    }
    assert tomllib.loads((small_run / "config.toml").read_text())["run_dir"] == str(small_run)


def test_event_log_reads_back_with_tensorboard(small_run):
    ea = accumulator(small_run)
    tags = ea.Tags()
    for tag in ("lr", "speed/images_per_second"):
        assert [e.step for e in ea.Scalars(tag)] == [1, 2], tag
    metrics = json.loads((small_run / "metrics.json").read_text())
    for split in ("train", "val"):  # one tag in two sub-runs: one chart with both curves
        sub = accumulator(small_run / split)
        for tag in ("Loss", "Accuracy"):
            want = [h[f"{split}_{tag.lower()}"] for h in metrics["history"]]
            assert [e.step for e in sub.Scalars(tag)] == [1, 2]
            assert [e.value for e in sub.Scalars(tag)] == pytest.approx(want, rel=1e-6), (split, tag)
    steps = [e.step for e in accumulator(small_run / "train").Scalars("Loss/step")]
    assert steps == sorted(steps) and steps[0] == 5
    assert {"features/conv1", "features/conv2", "features/conv3", "samples/train"} <= set(tags["images"])
    assert len(ea.Images("features/conv1")) == 2
    assert "weights/conv1.weight" in tags["histograms"] and "grads/fc2.bias" in tags["histograms"]
    assert tags["graph"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "vizkit" and start.hparams["lr"].number_value == 0.005
    assert start.hparams["mean"].string_value == "[0.1307]"  # the normalisation used, not the config's []
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    # HParams shows 5 columns at first, those marked `differs` first: these 5
    shown = {h.name for h in experiment.hparam_infos if h.differs}
    assert shown == {"model", "optimizer", "lr", "epochs", "batch_size"}


def test_feature_map_image_has_a_readable_tile_per_channel(small_run):
    ea = accumulator(small_run)
    event = ea.Images("features/conv3")[0]
    # 64 channels of 7 px, enlarged 4x to 28 px: 8 rows of 8 numbered tiles and a colour bar (tiles.layer_image)
    assert (event.height, event.width) == (16 + 8 * (28 + 11 + 3) + 3, 3 + 8 * (28 + 3) + 50)


def test_metrics_json(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "seconds"):
        assert key in metrics["history"][0]


def test_best_checkpoint_reproduces_the_test_accuracy(small_run, data_dir):
    from vizkit.data import load_dataset, normalize

    model, ckpt = open_checkpoint(small_run / "best.pth")
    assert ckpt["mean"] == [0.1307] and ckpt["model"] == "vizkit" and ckpt["input_shape"] == [1, 28, 28]
    test = load_dataset("mnist", data_dir, limit_train=1).test
    with torch.no_grad():
        pred = model(normalize(test.images, ckpt["mean"], ckpt["std"])).argmax(1)
    acc = (pred == test.labels).float().mean().item()
    assert acc == pytest.approx(json.loads((small_run / "metrics.json").read_text())["test_accuracy"], abs=1e-6)


def test_onnx_matches_the_checkpoint(small_run):
    onnx.checker.check_model(str(small_run / "model.onnx"))
    model, ckpt = open_checkpoint(small_run / "best.pth")
    x = torch.rand(9, 1, 28, 28)
    (got,) = ort.InferenceSession(str(small_run / "model.onnx")).run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        want = model((x - ckpt["mean"][0]) / ckpt["std"][0]).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_curves_png_is_a_real_picture(small_run):
    with Image.open(small_run / "curves.png") as img:
        assert img.size[0] > 500
        extrema = img.convert("L").getextrema()
    assert extrema[0] < 100 < extrema[1]  # lines on a background, not a blank canvas


@pytest.mark.slow  # two trainings, about 11 s
def test_same_seed_same_weights(data_dir, tmp_path):
    argv = ["--model", "net", "--limit-train", "300", "--epochs", "1", "--data-dir", str(data_dir)]
    assert main(argv + ["--run-dir", str(tmp_path / "a"), "--log", "off"]) == 0
    assert main(argv + ["--run-dir", str(tmp_path / "b"), "--log", "full"]) == 0
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--config", "missing.toml"], "config file 'missing.toml' not found"),
        (["--epochs", "0"], "'epochs' must be at least 1"),
        (["--lr", "-1"], "'lr' must be a positive number"),
        (["--set", "colour=red"], "unknown key 'colour'"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--model", "x"], "cuda|unknown model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err)
    assert not (tmp_path / "r").exists()


def test_unknown_toml_key_and_bad_optimizer(tmp_path, capsys):
    cfg = tmp_path / "x.toml"
    cfg.write_text('optimizer = "adagrad"\n')
    assert main(["--config", str(cfg)]) == 2
    assert "unknown optimizer 'adagrad'" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(data_dir, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    assert main(["--limit-train", "64", "--data-dir", str(data_dir), "--run-dir", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_run_dir(data_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["--limit-train", "64", "--data-dir", str(data_dir), "--run-dir", str(locked / "r")]) == 2
    assert "cannot write the run directory" in capsys.readouterr().err


def test_unwritable_run_dir_under_a_file(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--limit-train", "64", "--data-dir", str(data_dir), "--run-dir", str(blocker / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # a whole run in a fresh process, about 14 s
def test_cli_end_to_end_as_a_subprocess(data_dir, tmp_path):
    run = tmp_path / "e2e"
    cmd = [sys.executable, "-m", "vizkit.train", "--config", "004-cnn", "--limit-train", "500", "--epochs", "1"]
    cmd += ["--data-dir", str(data_dir), "--run-dir", str(run), "--log", "scalars"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and str(run) in result.stdout
    assert json.loads((run / "metrics.json").read_text())["model"] == "cnn"
    assert tomllib.loads((run / "config.toml").read_text())["batch_size"] == 50


def test_help_shows_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "vizkit.train", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "(default: 'vizkit')" in result.stdout and "--limit-train" in result.stdout
    assert "last 5000 images of the official training set" in " ".join(result.stdout.split())


@pytest.mark.slow  # an epoch on all of MNIST, about 10 s
def test_recipe_001_reaches_the_tutorials_accuracy_after_one_epoch(data_dir, tmp_path):
    # The tutorial reports 96.35% after epoch 1 on 60,000 images; we train on 55,000 and keep 5,000 apart.
    argv = ["--config", str(REPO / "vizkit/recipes/001-net.toml"), "--epochs", "1", "--log", "off"]
    assert main(argv + ["--data-dir", str(data_dir), "--run-dir", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test_accuracy"] >= 0.955


def test_confusion_matrix_agrees_with_the_test_accuracy(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 10_000
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert metrics["per_class_accuracy"][3] == pytest.approx(cm[3, 3] / cm[3].sum())
    for name in ("confusion_matrix.png", "top_losses.png"):
        with Image.open(small_run / name) as img:
            assert img.size[0] > 600


def test_evaluation_data_in_the_event_log(small_run):
    ea = accumulator(small_run)
    tags = ea.Tags()
    assert {"eval/confusion_matrix", "eval/top_losses"} <= set(tags["images"])
    assert "per_class_accuracy/7" in tags["scalars"]
    assert {"activations/relu1/mean", "activations/relu1/std", "activations/relu4/dead_fraction"} <= set(
        tags["scalars"]
    )
    # the logged statistics are those of the last epoch's model on the first 256 validation images
    from vizkit.analysis import activation_stats
    from vizkit.data import batches, load_dataset

    model, ckpt = open_checkpoint(small_run / "last.pth")
    val = load_dataset("mnist", ckpt["config"]["data_dir"], limit_train=1).val
    stats = activation_stats(model, next(batches(val, 256, ckpt["mean"], ckpt["std"]))[0])
    for layer in ("relu1", "relu4"):
        for key in ("mean", "dead_fraction"):
            logged = ea.Scalars(f"activations/{layer}/{key}")[-1].value
            assert logged == pytest.approx(stats[layer][key], abs=1e-5), (layer, key)
    assert set(ea.PluginTagToContent("pr_curves")) == {f"pr/{k}" for k in range(10)}
    # tensorboardX files text under <tag>/text_summary
    assert {"model/summary/text_summary", "config/text_summary"} <= set(ea.PluginTagToContent("text"))
    summary = ea.Tensors("model/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "conv1" in summary and "98,554" in summary  # the default model's parameter count


def test_projector_has_the_embedding(small_run):
    config = (small_run / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "penultimate:' in config
    folder = small_run / config.split('tensor_path: "')[1].split('"')[0]
    tensors = (folder.parent / "tensors.tsv").read_text().strip().splitlines()
    labels = (folder.parent / "metadata.tsv").read_text().strip().splitlines()
    assert len(tensors) == len(labels) == 1000 and len(tensors[0].split("\t")) == 128  # fc1's width
    assert (folder.parent / "sprite.png").is_file()


@pytest.mark.slow  # two trainings, about 6 s
def test_train_loss_is_the_mean_over_images_with_an_uneven_last_batch(data_dir, tmp_path):
    # 300 images in batches of 128: 128, 128 and 44. With log_every=1 each step's loss is logged as it is,
    # so the epoch's train loss must be their mean weighted by batch size
    run = tmp_path / "run"
    argv = ["--limit-train", "300", "--epochs", "1", "--batch-size", "128", "--log", "scalars"]
    assert main(argv + ["--data-dir", str(data_dir), "--run-dir", str(run), "--set", "log_every=1"]) == 0
    steps = accumulator(run / "train").Scalars("Loss/step")
    assert [e.step for e in steps] == [1, 2, 3]
    weighted = (128 * steps[0].value + 128 * steps[1].value + 44 * steps[2].value) / 300
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history[0]["train_loss"] == pytest.approx(weighted, rel=1e-6)
    assert 0 <= history[0]["train_accuracy"] * 300 == pytest.approx(round(history[0]["train_accuracy"] * 300))
