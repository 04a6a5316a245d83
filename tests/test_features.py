import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import centre_colours, colour_areas, colour_of, not_blank
from photos import digit_photo
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit.data import load_test_split
from vizkit.features import main

REPO = Path(__file__).resolve().parents[1]
NOTE = "normalised with mean 0.1307, std 0.3081 (from the checkpoint)"
CONV1 = [colour_of("viridis", c / 9) for c in range(10)]  # known_weights' conv1: channel c is c, on one scale 0..9


def squashed(text: str) -> str:
    """A title without its white space: matplotlib's titles are wrapped to the figure's width (at a space or
    after a hyphen), which this test does not pin down."""
    return "".join(text.split())


def title(fig) -> str:  # noqa: ANN001
    return squashed(fig._suptitle.get_text())  # Figure.get_suptitle() is matplotlib 3.8's; 3.7 is supported


def panels(fig) -> dict:  # noqa: ANN001
    """A figure's panels by their titles: 'input', then '0', '1', ... for the channels."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def test_conv1_grid_for_a_test_image(known_run, data_dir, capsys, saved_figures):
    """conv1 of known_weights is c everywhere in channel c: tile c is one colour, viridis at c/9 on the layer's
    one scale, in rows of four; beside them, the input is test image 3 as it is in the data set."""
    assert main(["--run", str(known_run), "--layer", "conv1", "--index", "3"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == known_run / "features" / "conv1-test-3.png"  # the default: inside the run
    (fig,) = saved_figures
    tiles = [panels(fig)[str(c)] for c in range(10)]
    assert centre_colours(out, tiles) == CONV1  # read back from the PNG
    corners = [(round(ax.get_window_extent().x0), -round(ax.get_window_extent().y0)) for ax in tiles]
    assert len({y for _, y in corners}) == 3 and sorted(corners, key=lambda xy: (xy[1], xy[0])) == corners
    assert [x for x, _ in corners[4:]] == [x for x, _ in corners[:6]]  # the columns line up
    test = load_test_split("mnist", data_dir)
    assert np.array_equal(panels(fig)["input"].images[0].get_array(), (test.images[3, 0].float() / 255).numpy())


@pytest.mark.slow  # 15 figures of the default model; test_channel_count_in_each_title draws --layer all quickly
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


def test_channel_count_in_each_title(known_run, tmp_path, saved_figures):
    """pytorch/examples' Net on 28 x 28: conv 5x5 gives 24, pooling 12, conv 8, pooling 4; 20 x 4 x 4 flat into
    fc1 (50) and fc2 (10). Each figure's title says so, then what the input was and what the model answered,
    and a map's figure has a numbered tile per channel."""
    assert main(["--run", str(known_run), "--layer", "all", "--out", str(tmp_path)]) == 0
    steps = {
        "conv1 (Conv2d, from input): 10 channels, 24x24": 10,
        "pool1 (MaxPool2d, from conv1): 10 channels, 12x12": 10,
        "relu1 (ReLU, from pool1): 10 channels, 12x12": 10,
        "conv2 (Conv2d, from relu1): 20 channels, 8x8": 20,
        "pool2 (MaxPool2d, from conv2): 20 channels, 4x4": 20,
        "relu2 (ReLU, from pool2): 20 channels, 4x4": 20,
        "fc1 (Linear, from flatten): 50 units": 0,  # bars, not tiles
        "relu3 (ReLU, from fc1): 50 units": 0,
        "fc2 (Linear, from relu3): 10 units": 0,
    }
    said = f" - test-0 (label 7): predicted 3 (91.0%); {NOTE}"
    assert [title(fig) for fig in saved_figures] == [squashed(step + said) for step in steps]
    tiles = [[t for t in panels(fig) if t.isdigit()] for fig in saved_figures]
    assert tiles == [[str(c) for c in range(n)] for n in steps.values()]


def test_own_photo_and_kernels(known_run, data_dir, tmp_path, saved_figures):
    """A photo of test digit 0 is named by its file and shown as the model's input, the digit it was made from;
    conv2's kernels of known_weights are +1 (red) where output channel = input channel, else -1 (blue)."""
    digit = load_test_split("mnist", data_dir).images[0, 0].numpy()
    photo, a, k = tmp_path / "my digit.jpg", tmp_path / "a.png", tmp_path / "k.png"
    digit_photo(digit, np.random.default_rng(0)).save(photo)
    assert main(["--run", str(known_run), "--layer", "conv1", "--image", str(photo), "--out", str(a)]) == 0
    assert main(["--run", str(known_run), "--layer", "conv2", "--weights", "--out", str(k)]) == 0
    maps, kernels = saved_figures
    said = f"my digit: predicted 3 (91.0%); {NOTE}"
    assert title(maps) == squashed(f"conv1 (Conv2d, from input): 10 channels, 24x24 - {said}")
    seen = np.asarray(panels(maps)["input"].images[0].get_array())
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    match = max(np.corrcoef(np.roll(seen, s, (0, 1)).ravel(), digit.ravel())[0, 1] for s in shifts)
    assert match > 0.95  # found on the page and centred by its mass as MNIST's are, to a pixel or two
    assert centre_colours(a, [panels(maps)[str(c)] for c in range(10)]) == CONV1
    # 20 output channels, of which the first 16 are drawn, a row each; a column per input channel (10)
    layout = "rows: output channels, columns: input channels (first 16)"
    assert title(kernels) == squashed(f"conv2 kernels (20, 10, 5, 5): {layout}")
    red, blue = colour_of("RdBu_r", 1.0), colour_of("RdBu_r", 0.0)
    assert centre_colours(k, kernels.axes[:160]) == [red if o == i else blue for o in range(16) for i in range(10)]


def test_list_layers(small_run, capsys):
    assert main(["--run", str(small_run), "--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "kind", "calls", "output", "params", "FLOPs", "RF", "from"]
    # conv1: 16 x 1 x 3 x 3 weights, no bias; 2 FLOPs per multiply-add, 9 per output, 16 x 28 x 28 outputs
    assert lines[1].split() == ["conv1", "conv", "Conv2d", "16", "x", "28", "x", "28", "144", "225,792", "3", "input"]
    assert lines[2].split() == ["bn1", "norm", "BatchNorm2d", "16", "x", "28", "x", "28", "32", "0", "3", "conv1"]


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


def test_end_to_end_subprocess(known_run, tmp_path):
    out = tmp_path / "c.png"
    cmd = [sys.executable, "-m", "vizkit.features", "--run", str(known_run), "--layer", "conv1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    areas = colour_areas(out, CONV1)  # ten tiles of one size, one colour each (the colour bar adds a few pixels)
    assert min(areas) > 2000 and max(areas) - min(areas) < 0.01 * min(areas)
    assert "vizkit.train" not in result.stderr


def test_no_training_code_is_imported():
    code = "import sys, vizkit.features, vizkit.predict, vizkit.netron_view; print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # else the empty output below would pass every check
    modules = result.stdout
    assert "'vizkit.features'" in modules
    for heavy in ("vizkit.train", "vizkit.engine", "vizkit.logger", "tensorboardX", "torchvision"):
        assert f"'{heavy}'" not in modules, heavy
