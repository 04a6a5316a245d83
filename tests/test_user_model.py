"""A person's own model: their file (`--model PATH.py:NAME`), their bare state dict, and the trust rule.

The model files are written to a temporary folder, outside the package, as a person would write them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit import explain, features, netron_view, predict, report, train
from vizkit.checkpoint import open_checkpoint, read_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Tutorial 004's model, as it is written there: blocks called conv1/conv2, the classifier called `out`.
TUTORIAL_004 = """
import torch.nn as nn

class CNN(nn.Module):
    def __init__(self):
        super(CNN, self).__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(kernel_size=2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.out = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        return self.out(x)
"""

# Unlike the zoo: nested blocks, BatchNorm, functional activations, a factory function, no layer named conv1,
# and a helper imported from a file beside it.
NESTED = """
import torch.nn as nn
import torch.nn.functional as F
from blocks import Block

class Tiny(nn.Module):
    def __init__(self, in_channels, num_classes, width):
        super().__init__()
        self.stem = nn.Sequential(Block(in_channels, width), Block(width, 2 * width))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes))

    def forward(self, x):
        return self.head(self.stem(x))

def make_tiny(in_channels=1, num_classes=10, width=8):
    return Tiny(in_channels, num_classes, width)
"""
BLOCKS = """
import torch.nn as nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
"""
MARK = "\nimport pathlib; pathlib.Path(__file__).with_name('imported.txt').write_text('code ran')\n"


def train_args(data_dir: Path, run_dir: Path, model: str, *extra: str) -> list[str]:
    return ["--model", model, "--limit-train", "600", "--epochs", "1", "--data-dir", str(data_dir),
            "--run-dir", str(run_dir), "--set", "log_every=5", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def user_runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    code = root / "code"
    code.mkdir()
    (code / "my_cnn.py").write_text(TUTORIAL_004 + MARK)
    (code / "tiny.py").write_text(NESTED)
    (code / "blocks.py").write_text(BLOCKS)
    assert train.main(train_args(data_dir, root / "cnn", f"{code}/my_cnn.py:CNN")) == 0
    assert (
        train.main(train_args(data_dir, root / "tiny", f"{code}/tiny.py:make_tiny", "--set", "model_args.width=4")) == 0
    )
    return root


def digit_photo(data_dir: Path, path: Path, index: int = 0) -> Path:
    """A test digit as a person photographs one: dark ink on light paper, larger than 28 x 28."""
    from vizkit.data import load_test_split

    pixels = 255 - load_test_split("mnist", data_dir).images[index, 0].numpy()
    Image.fromarray(pixels).resize((112, 112)).save(path)
    return path


def one_line_error(capsys, code: int) -> str:
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    return lines[0]


@pytest.mark.slow
def test_tutorial_004_model_trains_and_logs_its_own_layer_names(user_runs):
    run = user_runs / "cnn"
    ckpt = read_checkpoint(run / "best.pth")
    assert ckpt["model"] == f"{user_runs}/code/my_cnn.py:CNN"
    assert ckpt["model_source"]["sha256"] and (run / "source" / "my_cnn.py").is_file()
    ea = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    images = set(ea.Tags()["images"])
    assert {"features/conv1.0", "features/conv2.0"} <= images
    assert "activations/conv1.1/dead_fraction" in ea.Tags()["scalars"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1 and metrics["model"] == ckpt["model"]
    # model.onnx runs the user's model with the normalisation inside
    model, ckpt = open_checkpoint(run / "best.pth")
    x = torch.rand(3, 1, 28, 28)
    (got,) = ort.InferenceSession(str(run / "model.onnx")).run(["logits"], {"image": x.numpy()})
    want = model((x - 0.1307) / 0.3081).detach().numpy()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_nested_model_with_functional_relu_and_model_args(user_runs, caplog, data_dir, tmp_path):
    ckpt = read_checkpoint(user_runs / "tiny" / "best.pth")
    assert ckpt["model_args"] == {"width": 4}
    assert ckpt["state_dict"]["stem.0.conv.weight"].shape == (4, 1, 3, 3)
    ea = EventAccumulator(str(user_runs / "tiny"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert {"features/stem.0.conv", "features/stem.1.conv"} <= set(ea.Tags()["images"])
    # the blocks' functional F.relu calls are steps of the forward graph: their statistics are logged
    assert {"activations/relu/dead_fraction", "activations/relu_1/dead_fraction"} <= set(ea.Tags()["scalars"])
    with caplog.at_level("WARNING", logger="vizkit"):
        code = train.main(train_args(data_dir, tmp_path / "again", f"{user_runs}/code/tiny.py:make_tiny"))
    assert code == 0
    assert not [r.getMessage() for r in caplog.records if "ReLU" in r.getMessage()]  # nothing missing to say


@pytest.mark.slow
@pytest.mark.parametrize("run_name, layer", [("cnn", "conv1.0"), ("tiny", "stem.1.conv")])
def test_every_command_opens_a_user_model_run(user_runs, data_dir, tmp_path, capsys, run_name, layer):
    run = str(user_runs / run_name)
    dd = ["--data-dir", str(data_dir)]
    assert features.main(["--run", run, "--list-layers"]) == 0
    assert layer in capsys.readouterr().out
    assert features.main(["--run", run, "--layer", layer, "--out", str(tmp_path / "f.png"), *dd]) == 0
    assert Image.open(tmp_path / "f.png").size[0] > 200
    assert explain.main(["--run", run, "--out", str(tmp_path / "e.png"), *dd]) == 0
    assert Image.open(tmp_path / "e.png").size[0] > 200
    digit = digit_photo(data_dir, tmp_path / "digit.png")
    capsys.readouterr()
    assert predict.main(["--run", run, "--json", str(digit)]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["probabilities"]) == 10
    onnx_path = netron_view.onnx_for(str(Path(run) / "best.pth"), tmp_path)
    assert onnx_path.is_file()
    assert report.main([run, "--out", str(tmp_path / "r.html"), *dd]) == 0
    assert layer in (tmp_path / "r.html").read_text()


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """What a hand-written loop saves: torch.save(model.state_dict()), and a dict that holds one, beside the
    model's file. The weights are tutorial 004's CNN as built: opening a file needs no training."""
    root = tmp_path_factory.mktemp("bare")
    (root / "my_cnn.py").write_text(TUTORIAL_004 + MARK)
    code = {}
    exec(TUTORIAL_004, code)  # the class, without importing the file (MARK would write beside it)
    torch.manual_seed(0)
    state = code["CNN"]().state_dict()
    torch.save(state, root / "cnn.pk")
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer": {}}, root / "wrapped.pth")
    return root


@pytest.mark.parametrize("name", ["cnn.pk", pytest.param("wrapped.pth", marks=pytest.mark.slow)])  # same commands
def test_bare_state_dict_opens_in_every_command(bare, data_dir, tmp_path, capsys, name):
    ck = ["--checkpoint", str(bare / name), "--model", f"{bare}/my_cnn.py:CNN"]
    assert (
        features.main([*ck, "--layer", "conv2.0", "--out", str(tmp_path / "f.png"), "--data-dir", str(data_dir)]) == 0
    )
    assert features.main([*ck, "--layer", "conv1.0", "--mean", "0.5", "--std", "0.5", "--out", str(tmp_path / "g.png"),
                          "--data-dir", str(data_dir)]) == 0  # fmt: skip
    assert explain.main([*ck, "--index", "3", "--out", str(tmp_path / "e.png"), "--data-dir", str(data_dir)]) == 0
    assert predict.main([*ck, str(digit_photo(data_dir, tmp_path / "digit.png"))]) == 0
    args = netron_view.build_parser().parse_args([str(bare / name), "--model", f"{bare}/my_cnn.py:CNN"])
    assert netron_view.onnx_for(args.target, tmp_path, args).is_file()
    # the normalisation used is the dataset's unless told otherwise, and the figure says which
    model, ckpt = open_checkpoint(bare / name, f"{bare}/my_cnn.py:CNN")
    assert ckpt["mean"] == [0.1307] and "mnist" in ckpt["norm_source"]
    _, ckpt = open_checkpoint(bare / name, f"{bare}/my_cnn.py:CNN", [0.5], [0.5])
    assert ckpt["mean"] == [0.5] and "--mean" in ckpt["norm_source"]


def test_a_bare_state_dict_says_which_normalisation_it_assumes(bare, data_dir, tmp_path, capsys):
    ck = ["--checkpoint", str(bare / "cnn.pk"), "--model", f"{bare}/my_cnn.py:CNN"]
    photo = str(digit_photo(data_dir, tmp_path / "digit.png"))
    capsys.readouterr()
    assert predict.main([*ck, "--json", photo]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cnn.pk records no normalisation; assuming mnist's (mean 0.1307, std 0.3081): if you trained with other "
        "values, give them with --mean/--std (--mean 0 --std 1 for ToTensor() alone)"
    ]
    # given, nothing is assumed; and --std takes one value, so the photo after it stays a photo
    assert predict.main([*ck, "--json", "--mean", "0", "--std", "1", photo]) == 0
    out = capsys.readouterr()
    assert out.err == "" and json.loads(out.out)["file"] == photo
    assert predict.main([*ck, "--mean", "0,0", "--std", "1,1", photo]) == 2  # two values for one channel
    assert "--mean and --std need 1 value each" in capsys.readouterr().err
    assert predict.main([*ck, "--std", "nan", photo]) == 2 and "std > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_copied_run_whose_source_is_gone_or_changed_runs_no_code(user_runs, tmp_path, capsys, data_dir):
    code = tmp_path / "code"
    shutil.copytree(user_runs / "code", code)
    run = tmp_path / "run"
    assert train.main(train_args(data_dir, run, f"{code}/my_cnn.py:CNN", "--log", "off")) == 0
    marker = code / "imported.txt"
    marker.unlink()
    # its own file, unchanged, at its path: opens without --model
    assert features.main(["--run", str(run), "--layer", "conv1.0", "--out", str(tmp_path / "a.png"),
                          "--data-dir", str(data_dir)]) == 0  # fmt: skip
    assert marker.exists()
    marker.unlink()
    capsys.readouterr()
    # edited since training: refused, with its own message, and nothing of it runs
    source = code / "my_cnn.py"
    source.write_text(source.read_text() + "\n# edited\n")
    line = one_line_error(capsys, features.main(["--run", str(run)]))
    assert "changed since training" in line and str(source) in line and "--model" in line
    assert not marker.exists()
    # gone (a run shared with someone else): refused
    source.unlink()
    line = one_line_error(capsys, explain.main(["--run", str(run)]))
    assert "not there" in line and "--model" in line and str(source) in line
    line = one_line_error(capsys, report.main([str(run)]))
    assert "not there" in line
    assert not marker.exists()
    # naming the code on the command line is the person's choice: the kept copy opens it
    kept = run / "source" / "my_cnn.py"
    assert features.main(["--run", str(run), "--model", f"{kept}:CNN", "--layer", "conv1.0",
                          "--out", str(tmp_path / "b.png"), "--data-dir", str(data_dir)]) == 0  # fmt: skip


BAD_FILES = {
    "syntax.py": ("class CNN(nn.Module:\n    pass\n", "CNN", "syntax error"),
    "notmodule.py": ("class CNN:\n    pass\n", "CNN", "not a torch.nn.Module"),
    "importerr.py": ("import not_installed_package_xyz\n", "CNN", "could not import"),
    "raises.py": ("raise RuntimeError('boom')\n", "CNN", "raised RuntimeError"),
    "ok.py": (TUTORIAL_004, "Nope", "has no 'Nope'; it defines CNN"),
    "wrongout.py": (TUTORIAL_004.replace("10)", "5)"), "CNN", "logits of shape (batch, 10)"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_model_files_are_one_line(tmp_path, capsys, data_dir, name):
    text, attr, message = BAD_FILES[name]
    (tmp_path / name).write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = train.main(train_args(data_dir, tmp_path / "run", f"{tmp_path}/{name}:{attr}"))
    assert message in one_line_error(capsys, code)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before  # no run started


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{tmp}/missing.py:CNN", "does not exist"),
        ("{tmp}/ok.py:", "the name after ':' is missing"),
        ("{tmp}/ok.py", "name the class or function"),
        ("no_such_module_xyz:CNN", "no module named"),
    ],
)
def test_bad_model_specs_are_one_line(tmp_path, capsys, data_dir, spec, message):
    (tmp_path / "ok.py").write_text(TUTORIAL_004)
    code = train.main(train_args(data_dir, tmp_path / "run", spec.format(tmp=tmp_path)))
    assert message in one_line_error(capsys, code)


def test_bad_checkpoints_for_user_models_are_one_line(bare, tmp_path, capsys):
    model = f"{bare}/my_cnn.py:CNN"
    (tmp_path / "tiny.py").write_text(NESTED)
    (tmp_path / "blocks.py").write_text(BLOCKS)
    # key mismatch: the weights of one model with the code of another
    line = one_line_error(
        capsys, features.main(["--checkpoint", str(bare / "cnn.pk"), "--model", f"{tmp_path}/tiny.py:make_tiny"])
    )
    assert "does not match model 'make_tiny'" in line and "missing stem.0.conv.weight" in line and "unexpected" in line
    # shape mismatch
    state = torch.load(bare / "cnn.pk", weights_only=True)
    state["out.weight"] = torch.zeros(10, 7)
    torch.save(state, tmp_path / "shape.pth")
    line = one_line_error(
        capsys, predict.main(["--checkpoint", str(tmp_path / "shape.pth"), "--model", model, "x.png"])
    )
    assert "other shapes: out.weight (10x7 in the file, 10x1568 in the model)" in line
    # a bare state dict without --model
    line = one_line_error(capsys, explain.main(["--checkpoint", str(bare / "cnn.pk")]))
    assert "bare state dict" in line and "--model" in line
    # a whole pickled model: refused, and told how to save a state dict instead
    sys.path.insert(0, str(bare))
    try:
        import my_cnn  # noqa: PLC0415

        torch.save(my_cnn.CNN(), tmp_path / "whole.pth")
    finally:
        sys.path.remove(str(bare))
    line = one_line_error(capsys, features.main(["--checkpoint", str(tmp_path / "whole.pth"), "--model", model]))
    assert "whole pickled model" in line and "torch.save(model.state_dict()" in line
    # a file that is no checkpoint at all
    (tmp_path / "notes.pth").write_text("hello")
    line = one_line_error(capsys, features.main(["--checkpoint", str(tmp_path / "notes.pth"), "--model", model]))
    assert "not a readable checkpoint" in line
    # a dict without any state dict in it
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    line = one_line_error(capsys, features.main(["--checkpoint", str(tmp_path / "empty.pth"), "--model", model]))
    assert "holds no state dict" in line


@pytest.mark.slow
def test_user_model_end_to_end_as_a_subprocess(tmp_path, data_dir):
    """One real command line from outside the repository, as a person types it."""
    (tmp_path / "my_cnn.py").write_text(TUTORIAL_004)
    cmd = [sys.executable, "-m", "vizkit.train", "--model", "my_cnn.py:CNN", "--limit-train", "300", "--epochs", "1",
           "--log", "off", "--data-dir", str(data_dir), "--run-dir", "out"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cmd = [sys.executable, "-m", "vizkit.features", "--run", "out", "--layer", "conv2.0", "--data-dir", str(data_dir)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "features" / "conv2.0-test-0.png").is_file()


def forged_run(
    root: Path, user_runs: Path, model: str, source: Path, model_args: dict, files: dict | None = None
) -> Path:
    """A run directory as someone could hand it over: a real checkpoint with its model fields rewritten
    (and `files` written into it first)."""
    from vizkit.checkpoint import save_checkpoint
    from vizkit.models import sha256_file

    run = root / "forged"
    shutil.copytree(user_runs / "cnn", run)
    for name, text in (files or {}).items():
        (run / name).write_text(text)
    for name in ("best.pth", "last.pth"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt.update(
            model=model, model_args=model_args, model_source={"path": str(source), "sha256": sha256_file(source)}
        )
        state = ckpt.pop("state_dict")
        holder = torch.nn.Module()
        holder.state_dict = lambda state=state: state  # save_checkpoint reads model.state_dict()
        save_checkpoint(run / name, holder, **ckpt)
    text = (run / "config.toml").read_text().replace(f'model = "{user_runs}/code/my_cnn.py:CNN"', f'model = "{model}"')
    (run / "config.toml").write_text(
        text.replace("[model_args]", f"[model_args]\n{json.dumps(model_args)[1:-1].replace(':', ' =')}")
    )
    return run


@pytest.mark.slow
def test_a_checkpoint_cannot_name_code_outside_the_persons_own_files(user_runs, tmp_path, capsys):
    import os

    marker = tmp_path / "pwned"
    # the standard library's os.py has a hash anyone can know, and os.system runs what model_args say
    run = forged_run(tmp_path, user_runs, "os:system", Path(os.__file__), {"command": f"touch {marker}"})
    line = one_line_error(capsys, features.main(["--run", str(run)]))
    assert "Python's or a package's own code" in line and "--model" in line
    line = one_line_error(capsys, train.main(["--resume", str(run)]))
    assert not marker.exists()
    # code shipped inside the run directory itself is not the person's file either
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n" + TUTORIAL_004
    inside = tmp_path / "b" / "forged" / "evil.py"
    run2 = forged_run(tmp_path / "b", user_runs, f"{inside}:CNN", inside, {}, files={"evil.py": evil})
    line = one_line_error(capsys, explain.main(["--run", str(run2)]))
    assert "the checkpoint's own folder" in line
    assert not marker.exists()


@pytest.mark.slow
def test_resume_imports_only_what_last_pth_recorded(user_runs, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(user_runs / "cnn", run)
    (run / "metrics.json").unlink()
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n")
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace(f"{user_runs}/code/my_cnn.py:CNN", f"{evil}:CNN"))
    line = one_line_error(capsys, train.main(["--resume", str(run)]))
    assert "names model" in line and "edited by hand" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model_args=3", "model_args.x=1"], "must be a table of keyword arguments"),
        (["model_args.when=2024-01-01"], "must be a table of keyword arguments"),
        (["model_args.width=4"], "zoo model 'vizkit' takes none"),
    ],
)
def test_bad_model_args_are_one_line(tmp_path, capsys, data_dir, sets, message):
    argv = ["--limit-train", "100", "--epochs", "1", "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "r")]
    for s in sets:
        argv += ["--set", s]
    assert message in one_line_error(capsys, train.main(argv))


def test_config_with_model_args_round_trips():
    from vizkit.config import TrainConfig, from_dict, to_toml, tomllib

    cfg = from_dict({"model": "a.py:B", "model_args": {"width": 4, "name": "é ✓ 😀", "drop": 0.5, "bn": True}})
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg
    assert TrainConfig().model_args == {}


def test_optimize_inputs_leaves_no_gradient_on_the_model():
    from vizkit.attribution import optimize_inputs
    from vizkit.models import get_model
    from vizkit.normalize import Normalized

    model = get_model("net").eval()
    optimize_inputs(Normalized(model, [0.1307], [0.3081]), model, "conv1", [1, 28, 28], steps=2)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_resume_and_torchrun_work_for_a_user_model(user_runs, data_dir, tmp_path):
    """Ctrl-C after the first epoch, then --resume (in-process), and two torchrun processes, on tutorial 004's
    model from its own file."""
    model = f"{user_runs}/code/my_cnn.py:CNN"
    args = ["--model", model, "--limit-train", "3000", "--epochs", "2", "--data-dir", str(data_dir), "--log", "scalars"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-u", "-m", "vizkit.train", *args, "--run-dir", str(run)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in proc.stdout:
            if "epoch 1/2:" in line:
                proc.send_signal(__import__("signal").SIGINT)
                break
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    assert read_checkpoint(run / "last.pth")["epoch"] == 1
    assert train.main(["--resume", str(run)]) == 0
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [1, 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vizkit.train"]
    ddp = ["--model", model, "--limit-train", "2000", "--epochs", "1", "--batch-size", "64", "--set", "log=off",
           "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(cmd + ddp, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["model"] == model and metrics["test_accuracy"] > 0.5
