import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from photos import digit_photo
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit.data import load_test_split
from vizkit.features import main

REPO = Path(__file__).resolve().parents[1]


def not_blank(path: Path) -> bool:
    with Image.open(path) as img:
        lo, hi = img.convert("L").getextrema()
        return img.size[0] > 200 and hi - lo > 100


def test_conv1_grid_for_a_test_image(small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)  # the default output is inside the run: keep the shared fixture as it was
    assert main(["--run", str(run), "--layer", "conv1", "--index", "3"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == run / "features" / "conv1-test-3.png"
    assert not_blank(out)


def test_all_layers_have_their_channel_counts(small_run, tmp_path, capsys):
    assert main(["--run", str(small_run), "--layer", "all", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    # every step of forward but the dropouts and the flatten, which show their input again
    blocks = [f"{kind}{i}" for i in (1, 2, 3) for kind in ("conv", "bn", "relu", "pool")]
    assert written == sorted(f"{n}-test-0.png" for n in (*blocks, "fc1", "relu4", "fc2"))
    # the tiles are numbered 0..C-1: the figure of a layer of C channels is taller when C is larger
    heights = {n: Image.open(tmp_path / f"{n}-test-0.png").size[1] for n in ("conv1", "conv2", "conv3")}
    assert heights["conv1"] < heights["conv2"] < heights["conv3"]
    assert all(not_blank(tmp_path / name) for name in written)


def test_channel_count_in_each_title(small_run, tmp_path, capsys):
    from vizkit.checkpoint import load_checkpoint
    from vizkit.graph import forward_graph

    model, ckpt = load_checkpoint(small_run / "best.pth")
    convs = [s for s in forward_graph(model, ckpt["input_shape"]).steps if s.kind == "conv"]
    assert [(s.name, s.shape) for s in convs] == [
        ("conv1", (16, 28, 28)),
        ("conv2", (32, 14, 14)),
        ("conv3", (64, 7, 7)),
    ]


def test_own_photo_and_kernels(small_run, data_dir, tmp_path):
    photo = tmp_path / "my digit.jpg"
    digit_photo(load_test_split("mnist", data_dir).images[0, 0].numpy(), np.random.default_rng(0)).save(photo)
    assert (
        main(["--run", str(small_run), "--layer", "conv2", "--image", str(photo), "--out", str(tmp_path / "a.png")])
        == 0
    )
    assert not_blank(tmp_path / "a.png")
    assert main(["--run", str(small_run), "--layer", "conv1", "--weights", "--out", str(tmp_path / "k.png")]) == 0
    assert not_blank(tmp_path / "k.png")


def test_list_layers(small_run, capsys):
    assert main(["--run", str(small_run), "--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "kind", "calls", "output", "from"]
    assert lines[1].split() == ["conv1", "conv", "Conv2d", "16", "x", "28", "x", "28", "input"]
    assert lines[2].split() == ["bn1", "norm", "BatchNorm2d", "16", "x", "28", "x", "28", "conv1"]


def test_tensorboard_gets_the_figures(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)  # it adds an event file: keep the shared run as the runner left it
    assert main(["--run", str(run), "--layer", "conv1", "--tensorboard", "--out", str(tmp_path / "x.png")]) == 0
    ea = EventAccumulator(str(run), size_guidance={"images": 0})
    ea.Reload()
    assert "features/conv1-test-0" in ea.Tags()["images"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layer", "conv9"], "no layer named 'conv9'; layers: conv1, bn1"),
        (["--layer", "fc1", "--weights"], "--weights needs a conv layer and 'fc1' is not one; conv layers: conv1"),
        (["--index", "10000"], "out of range"),
        (["--image", "missing.png"], "does not exist"),
    ],
)
def test_bad_input(small_run, argv, message, capsys):
    assert main(["--run", str(small_run)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_end_to_end_subprocess(small_run, tmp_path):
    out = tmp_path / "c.png"
    cmd = [sys.executable, "-m", "vizkit.features", "--run", str(small_run), "--layer", "conv1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out) and not_blank(out)
    assert "vizkit.train" not in result.stderr


def test_no_training_code_is_imported():
    code = "import sys, vizkit.features, vizkit.predict, vizkit.netron_view; print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # else the empty output below would pass every check
    modules = result.stdout
    assert "'vizkit.features'" in modules
    for heavy in ("vizkit.train", "vizkit.engine", "vizkit.logger", "tensorboardX", "torchvision"):
        assert f"'{heavy}'" not in modules, heavy
