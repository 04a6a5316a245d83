"""Code and data nobody on the project wrote: every step of a person's forward, in every command and the tab.

pytorch/examples' mnist Net (functional relu, pool, flatten, dropout, log_softmax) trained through Run by its
own loop; a residual model with `x + block(x)` in a ModuleList; tutorial 004's CNN returning `(output, x)`;
a folder of images (`vizkit.train --dataset FOLDER`); a Run on colour, non-square pictures of shapes. Each
opens in every inspection command and in the tab, run from a folder of its own that must stay empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import EXAMPLES_NET
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vizkit import explain, features, predict, report, train
from vizkit.checkpoint import open_checkpoint, read_checkpoint
from vizkit.data import load_test_split
from vizkit.tensorboard_plugin import live

REPO = Path(__file__).resolve().parents[1]

# pytorch/examples' mnist/main.py: its Net as written, and a loop of its kind with Run's four lines
EXAMPLES_SCRIPT = (
    EXAMPLES_NET.read_text()
    + """
import sys
import torch.optim as optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms
from vizkit import Run  # vizkit


if __name__ == "__main__":
    data, run_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = Subset(datasets.MNIST(data, train=True, transform=transform), range(1000))
    test_set = Subset(datasets.MNIST(data, train=False, transform=transform), range(500))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=500)
    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    with Run(model, next(iter(test_loader))[0], (0.1307,), (0.3081,), run_dir=run_dir) as run:  # vizkit
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            run.step(loss)  # vizkit
        run.epoch(1, val_loader=test_loader)  # vizkit
        run.evaluate(test_loader)  # vizkit
"""
)

RESIDUAL = """
import torch.nn as nn
import torch.nn.functional as F

class Residual(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(2))
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(F.max_pool2d(x, 2).flatten(1))
"""

# Tutorial 004's CNN as the widely copied version of it writes it: forward returns (output, x)
TUPLE_004 = """
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
        output = self.out(x)
        return output, x
"""


def photo_of_digit(data_dir: Path, path: Path, index: int) -> Path:
    pixels = 255 - load_test_split("mnist", data_dir).images[index, 0].numpy()
    Image.fromarray(pixels).resize((112, 112)).save(path)
    return path


def inspect_everything(run: Path, photo: Path, elsewhere: Path, monkeypatch, capsys) -> dict:  # noqa: ANN001
    """Every inspection command on `run`, from `elsewhere`, with no --data-dir: what each printed."""
    monkeypatch.chdir(elsewhere)
    printed = {}
    for name, command, argv in (
        ("list", features, ["--run", str(run), "--list-layers"]),
        ("all", features, ["--run", str(run), "--layer", "all", "--index", "1"]),
        ("explain", explain, ["--run", str(run), "--index", "1"]),
        ("photo", features, ["--run", str(run), "--image", str(photo)]),
        ("predict", predict, ["--run", str(run), "--json", str(photo)]),
        ("report", report, [str(run)]),
    ):
        assert command.main(argv) == 0, (name, capsys.readouterr())
        printed[name] = capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []  # nothing downloaded or written where the commands ran
    return printed


def opened_in_the_tab(run: Path, body: dict) -> dict:
    loaded = live.open_run(run / "best.pth", run.parent)
    answer = live.update(loaded, body)
    assert answer["ok"], answer
    return answer


@pytest.fixture(scope="module")
def examples_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytorch/examples' Net, trained by its own loop with Run's four lines, as a script run by python."""
    root = tmp_path_factory.mktemp("examples")
    (root / "mnist_main.py").write_text(EXAMPLES_SCRIPT)
    run = root / "runs" / "net"
    done = subprocess.run([sys.executable, "mnist_main.py", str(data_dir.resolve()), str(run)], cwd=root,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run


@pytest.mark.slow
def test_pytorch_examples_net_every_step_in_every_command(examples_run, data_dir, tmp_path, monkeypatch, capsys):
    run = examples_run
    ckpt = read_checkpoint(run / "best.pth")
    # where its data came from: the loader's own MNIST folder, and that it was the person's own loop
    assert ckpt["data_dir"] == str(data_dir.resolve()) and ckpt["data_source"] == "your own training loop"
    # its dataset named by the loader's torchvision class; its test set is found, so the examples are not used
    assert ckpt["dataset"] == "mnist" and ckpt["examples"].shape == (16, 1, 28, 28)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = photo_of_digit(data_dir, tmp_path / "seven.png", 0)
    printed = inspect_everything(run, photo, elsewhere, monkeypatch, capsys)
    listing = {line.split()[0]: line.split()[1:3] for line in printed["list"].splitlines()[1:]}
    assert listing["relu_1"] == ["activation", "F.relu"] and listing["max_pool2d"] == ["pool", "F.max_pool2d"]
    assert listing["flatten"] == ["flatten", "torch.flatten"] and listing["log_softmax"] == ["softmax", "F.log_softmax"]
    drawn = {Path(line).name for line in printed["all"].split()}
    want = {"conv1", "relu", "conv2", "relu_1", "max_pool2d", "fc1", "relu_2", "fc2", "log_softmax"}
    assert drawn == {f"{name}-test-1.png" for name in want}  # dropout and flatten repeat their input: not drawn
    for name in drawn:
        with Image.open(run / "features" / name) as img:
            assert img.size[0] > 400 and len(set(img.convert("L").getdata())) > 10  # a picture, not blank
    # predict reads the output as log-probabilities: its probabilities are their exp, named by class
    (answer,) = [json.loads(line) for line in printed["predict"].splitlines()]
    model, _ = open_checkpoint(run / "best.pth")
    from vizkit.preprocess import prepare

    with Image.open(photo) as img:
        x = (prepare(img, [1, 28, 28]) - 0.1307) / 0.3081
    want = model(x).exp()[0].detach().numpy()
    assert np.allclose(answer["probabilities"], want, atol=1e-6) and answer["class"] == str(answer["prediction"])
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    # model.onnx names its output for what it holds, and equals torch in onnxruntime
    session = ort.InferenceSession(str(run / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["log_probabilities"]
    pixels = torch.rand(4, 1, 28, 28)
    (got,) = session.run(None, {"image": pixels.numpy()})
    assert np.abs(got - model((pixels - 0.1307) / 0.3081).detach().numpy()).max() < 1e-4
    # the tab: every drawn step, the output as log-probabilities named by class, Grad-CAM on relu_1
    answer = opened_in_the_tab(run, {"source": "test", "index": 1})
    steps = {layer["name"]: layer for layer in answer["layers"]}
    assert list(steps) == ["conv1", "relu", "conv2", "relu_1", "max_pool2d", "fc1", "relu_2", "fc2", "log_softmax"]
    assert steps["relu_1"]["op"] == "F.relu" and steps["relu_1"]["inputs"] == ["conv2"]
    output = steps["log_softmax"]
    assert output["output"] == "log-probabilities" and output["labels"] == list("0123456789")
    assert answer["cam"]["layer"] == "relu_1" and answer["label"] == 2  # MNIST's test image 1 is a 2
    # activation statistics of every ReLU, functional ones included, in its own event log
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    assert {f"activations/{r}/dead_fraction" for r in ("relu", "relu_1", "relu_2")} <= set(ea.Tags()["scalars"])
    assert "relu_1" in (run / "report.html").read_text()  # the model summary's rows: every step


@pytest.mark.slow
def test_a_residual_model_shows_its_additions(data_dir, tmp_path, monkeypatch, capsys):
    code = tmp_path / "code"
    code.mkdir()
    (code / "res.py").write_text(RESIDUAL)
    run = tmp_path / "runs" / "res"
    args = ["--model", f"{code}/res.py:Residual", "--limit-train", "600", "--epochs", "1", "--data-dir", str(data_dir),
            "--run-dir", str(run)]  # fmt: skip
    assert train.main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    capsys.readouterr()
    printed = inspect_everything(run, photo_of_digit(data_dir, tmp_path / "seven.png", 0), elsewhere, monkeypatch,
                                 capsys)  # fmt: skip
    lines = {line.split()[0]: line.split() for line in printed["list"].splitlines()[1:]}
    assert lines["add"][1:3] == ["add", "+"] and lines["add"][-2:] == ["max_pool2d,", "blocks.0.1"]
    assert lines["add_1"][-2:] == ["relu_1,", "blocks.1.1"]
    out = tmp_path / "add.png"
    assert features.main(["--run", str(run), "--layer", "add_1", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert len(set(img.convert("L").getdata())) > 10
    ea = EventAccumulator(str(run), size_guidance={"images": 0})
    ea.Reload()
    # the Images tab: every conv and every addition, what the next layer receives
    assert {"features/stem", "features/add", "features/add_1"} <= set(ea.Tags()["images"])
    answer = opened_in_the_tab(run, {"source": "test", "index": 0})
    adds = [layer for layer in answer["layers"] if layer["kind"] == "add"]
    assert [(a["name"], a["inputs"], a["shape"]) for a in adds] == [
        ("add", ["max_pool2d", "blocks.0.1"], [8, 14, 14]), ("add_1", ["relu_1", "blocks.1.1"], [8, 14, 14])
    ]  # fmt: skip
    assert answer["cam"]["layer"] == "relu_2"  # the last conv's BatchNorm, the addition, then its ReLU


@pytest.mark.slow
def test_tutorial_004_returning_a_tuple_trains_and_opens(data_dir, tmp_path, monkeypatch, capsys):
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_cnn.py").write_text(TUPLE_004)
    run = tmp_path / "runs" / "cnn"
    args = ["--model", f"{code}/my_cnn.py:CNN", "--limit-train", "600", "--epochs", "1", "--data-dir", str(data_dir),
            "--run-dir", str(run)]  # fmt: skip
    assert train.main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5 and metrics["onnx_max_abs_diff"] < 1e-4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = photo_of_digit(data_dir, tmp_path / "seven.png", 0)
    printed = inspect_everything(run, photo, elsewhere, monkeypatch, capsys)
    assert "conv1.2" in printed["list"] and "view" in printed["list"]
    answer = opened_in_the_tab(run, {"source": "test", "index": 0})
    names = [(layer["name"], layer["blocks"]) for layer in answer["layers"]]
    assert names == [("conv1.0", []), ("conv1.1", []), ("conv1.2", ["conv1"]), ("conv2.0", []), ("conv2.1", []),
                     ("conv2.2", ["conv2"]), ("out", [])]  # fmt: skip
    assert answer["layers"][-1]["output"] == "logits" and answer["cam"]["layer"] == "conv2.1"


def make_digit_folder(data_dir: Path, root: Path) -> Path:
    """Real MNIST test digits 0, 1 and 7 as PNG files, 60 a class, in a folder per class named by word; a few
    are 24 px (the most common size, 20 px, is what they are resized to)."""
    test = load_test_split("mnist", data_dir)
    names = {0: "zero", 1: "one", 7: "seven"}
    for digit, name in names.items():
        (root / name).mkdir(parents=True)
        picked = (test.labels == digit).nonzero().flatten()[:60]
        for k, i in enumerate(picked.tolist()):
            size = 24 if k % 10 == 0 else 20
            Image.fromarray(test.images[i, 0].numpy()).resize((size, size)).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_folder_of_images_trains_and_opens_with_its_class_names(data_dir, tmp_path, monkeypatch, capsys):
    folder = make_digit_folder(data_dir, tmp_path / "digits")
    run = tmp_path / "runs" / "folder"
    argv = ["--dataset", str(folder), "--epochs", "2", "--run-dir", str(run), "--batch-size", "16"]
    assert train.main(argv) == 0
    ckpt = read_checkpoint(run / "best.pth")
    assert ckpt["classes"] == ["one", "seven", "zero"] and ckpt["input_shape"] == [1, 20, 20]  # sorted, as ImageFolder
    assert ckpt["dataset"] == str(folder.resolve()) and ckpt["data_source"] == str(folder.resolve())
    # the split: a sixth of each class for test (10), a tenth of the rest for validation (5), 45 to train
    from vizkit.data import load_folder

    data = load_folder(str(folder))
    assert [Counter(s.labels.tolist()) for s in (data.train, data.val, data.test)] == [
        Counter({0: 45, 1: 45, 2: 45}), Counter({0: 5, 1: 5, 2: 5}), Counter({0: 10, 1: 10, 2: 10})
    ]  # fmt: skip
    # the normalisation is the training split's, recorded
    pixels = data.train.images.double() / 255
    assert ckpt["mean"] == [round(pixels.mean().item(), 4)] and ckpt["std"] == [round(pixels.std().item(), 4)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.8 and len(metrics["confusion_matrix"]) == 3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = photo_of_digit(data_dir, tmp_path / "seven.png", 0)  # MNIST's test image 0 is a 7
    printed = inspect_everything(run, photo, elsewhere, monkeypatch, capsys)
    (answer,) = [json.loads(line) for line in printed["predict"].splitlines()]
    assert answer["class"] == "seven"
    answer = opened_in_the_tab(run, {"source": "test", "index": 0})
    assert answer["classes"] == ["one", "seven", "zero"] and answer["layers"][-1]["labels"] == answer["classes"]
    assert answer["label"] == data.test.labels[0].item()


SHAPES = ("circle", "cross", "square", "triangle")
SHAPES_NET = """
import torch.nn as nn
import torch.nn.functional as F

class ShapesNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 12 * 16, 4)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))
"""


def shape_picture(kind: int, rng: np.random.Generator, height: int = 24, width: int = 32) -> np.ndarray:
    """A coloured shape on a coloured background, 24 x 32: what a person's own non-digit data looks like."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = rng.uniform(9, 15), rng.uniform(10, 22), rng.uniform(6, 9)
    mask = {0: (yy - cy) ** 2 + (xx - cx) ** 2 < r**2,
            1: (np.abs(yy - cy) < 2) & (np.abs(xx - cx) < r) | (np.abs(xx - cx) < 2) & (np.abs(yy - cy) < r),
            2: (np.abs(yy - cy) < r * 0.8) & (np.abs(xx - cx) < r * 0.8),
            3: (yy - cy < r * 0.7) & (np.abs(xx - cx) < (yy - cy + r * 0.7) * 0.6)}[kind]  # fmt: skip
    image = np.empty((3, height, width), np.float32)
    image[:] = rng.uniform(0, 0.4, (3, 1, 1))
    image[:, mask] = rng.uniform(0.6, 1.0, (3, 1))
    return image


@pytest.mark.slow  # a colour, non-square run through every command, about 7 s
def test_a_run_on_colour_non_square_shapes_opens_everywhere(tmp_path, monkeypatch, capsys):
    from vizkit import Run

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 512)
    images = torch.from_numpy(np.stack([shape_picture(int(k), rng) for k in labels]))
    x, y = (images - 0.5) / 0.25, torch.from_numpy(labels)
    code = tmp_path / "code"
    code.mkdir()
    (code / "shapes_net.py").write_text(SHAPES_NET)
    monkeypatch.syspath_prepend(str(code))
    from shapes_net import ShapesNet

    torch.manual_seed(0)
    model = ShapesNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    run_dir = tmp_path / "runs" / "shapes"
    loader = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    with Run(model, x[:16], (0.5,) * 3, (0.25,) * 3, run_dir=run_dir, classes=SHAPES) as run:
        for epoch in (1, 2):
            for xb, yb in loader:
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            run.epoch(epoch, val_loader=loader[:2])
        run.evaluate(loader[:2])
    ckpt = read_checkpoint(run_dir / "best.pth")
    assert ckpt["dataset"] is None and ckpt["examples"].shape == (16, 3, 24, 32)  # kept to inspect by number
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = tmp_path / "circle.png"
    Image.fromarray((shape_picture(0, rng).transpose(1, 2, 0) * 255).astype(np.uint8)).resize((96, 72)).save(photo)
    printed = inspect_everything(run_dir, photo, elsewhere, monkeypatch, capsys)
    (answer,) = [json.loads(line) for line in printed["predict"].splitlines()]
    assert answer["class"] == "circle"  # the photo fitted to 32 x 24, in colour (no digit preparation)
    assert {Path(p).name for p in printed["all"].split()} == {
        f"{n}-example-1.png" for n in ("conv", "relu", "max_pool2d", "fc")
    }
    html = (run_dir / "report.html").read_text()
    assert "None: this run came from a training loop of your own" in html and "the examples the run kept" in html
    assert "Images 0 to 3 of the examples the run kept: predicted " in html  # no label it was not given
    answer = opened_in_the_tab(run_dir, {"source": "test", "index": 3})
    assert answer["classes"] == list(SHAPES) and answer["label"] is None and answer["input"]["width"] == 32
    described = live.describe(live.open_run(run_dir / "best.pth", run_dir.parent))
    assert not described["digits"] and described["test_images"] == "the 16 examples the run kept"
