"""Shared fixtures: real MNIST (fetched once into the repo's data/ and reused), one small trained run, a run
whose weights are set by hand (every figure of it has an answer worked out on paper), and ways to read a
picture back: its pixels, and the matplotlib figure it was saved from."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("VIZKIT_TEST_DATA", REPO / "data"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EXAMPLES_NET = REPO / "experiments" / "pytorch_examples_net.py"  # pytorch/examples' mnist Net, as it is written
# VIZKIT_TEST_DEVICE=cuda runs the suite's training and Run tests on the GPU (and refuses to start without one);
# the default, auto, is what vizkit.train does: CUDA where there is one
DEVICE = os.environ.get("VIZKIT_TEST_DEVICE", "auto")
# the suite's own vizkit data folder (its signing key), also for the commands it runs as subprocesses:
# the person's real key is never read or made by a test
os.environ["VIZKIT_HOME"] = tempfile.mkdtemp(prefix="vizkit-home-")
atexit.register(shutil.rmtree, os.environ["VIZKIT_HOME"], True)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# pytest-xdist (addopts: -n auto) runs a worker per usable CPU, and each worker gets its share of them for torch's
# threads, it and the commands it starts (set before torch is imported). Two workers of two threads each on 2
# cores wait on each other's spinning OpenMP threads: the suite took longer than in one process.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, usable_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # on a GPU, two workers: each holds a CUDA context, and two torchrun tests may run at once
    on_gpu = DEVICE == "cuda" or (DEVICE == "auto" and Path("/dev/nvidia0").exists())
    return min(usable_cpus(), 2) if on_gpu else usable_cpus()


def pytest_configure(config: pytest.Config) -> None:
    if DEVICE not in ("auto", "cpu", "cuda"):
        raise pytest.UsageError(f"VIZKIT_TEST_DEVICE must be auto, cpu or cuda, not {DEVICE!r}")
    if DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("VIZKIT_TEST_DEVICE=cuda, but torch sees no CUDA device")


def torch_device() -> str:
    """Where tests put the models they build themselves."""
    import torch

    return "cuda" if DEVICE == "cuda" or (DEVICE == "auto" and torch.cuda.is_available()) else "cpu"


def chromium_page():  # noqa: ANN201
    """Playwright driving Debian's Chromium (never a downloaded browser); skipped with the reason if absent."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    return sync_api.sync_playwright()


@contextmanager
def tensorboard_server(logdir: Path, workdir: Path) -> Iterator[tuple[str, Path]]:
    """`tensorboard --logdir` as a person runs it (from another directory), on a free port of 127.0.0.1:
    yields its URL and the file its output goes to."""
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"]
    log = workdir / "tensorboard.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(r"(http://127\.0\.0\.1:\d+/)", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("tensorboard did not start: " + log.read_text())
            time.sleep(0.2)
        yield found.group(1), log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from filelock import FileLock

    from vizkit.data import ensure_mnist

    # pytest-xdist's workers: one fetches, the others wait for it (the lock in the folder all workers share,
    # not in DATA_DIR, which may be read-only)
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "mnist.lock")):
        ensure_mnist(DATA_DIR)
    return DATA_DIR


@pytest.fixture(scope="session")
def small_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vizkit's default model trained for 2 epochs on 1,000 real MNIST images, with full logging."""
    from vizkit.train import main

    run_dir = tmp_path_factory.mktemp("runs") / "small"
    argv = ["--limit-train", "1000", "--epochs", "2", "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
    assert main(argv + ["--set", "log_every=5", "--device", DEVICE]) == 0
    return run_dir


@pytest.fixture(scope="session")
def mnist_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model after one epoch on all of MNIST (about 98.5% on the test set), no event log."""
    from vizkit.train import main

    run_dir = tmp_path_factory.mktemp("runs") / "mnist"
    argv = ["--epochs", "1", "--log", "off", "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
    assert main(argv + ["--device", DEVICE]) == 0
    return run_dir


def not_blank(path: Path, min_width: int = 200) -> bool:
    """A picture, not an empty canvas: wider than `min_width` px, with both dark and light in it."""
    from PIL import Image

    with Image.open(path) as img:
        lo, hi = img.convert("L").getextrema()
        return img.size[0] > min_width and hi - lo > 100


def rgb(path: Path):  # noqa: ANN201
    """The picture at `path` as an (H, W, 3) uint8 array: what a person's screen shows."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def colour_of(cmap: str, value: float) -> tuple[int, int, int]:
    """The RGB matplotlib paints `value` (0 to 1 on the colour scale) with, as imshow paints it."""
    from matplotlib import colormaps

    return tuple(int(v) for v in colormaps[cmap](value, bytes=True)[:3])


def colour_areas(path: Path, colours: list[tuple[int, int, int]]) -> list[int]:
    """How many pixels of the picture at `path` are exactly each of `colours`."""
    pixels = rgb(path)
    return [int((pixels == colour).all(-1).sum()) for colour in colours]


def centre_colours(path: Path, axes: list) -> list[tuple[int, int, int]]:
    """The colour at the centre of each matplotlib Axes, read from the PNG its figure was saved to."""
    pixels = rgb(path)
    colours = []
    for ax in axes:
        box = ax.get_window_extent()  # display pixels, from the bottom left; the PNG counts rows from the top
        x, y = round((box.x0 + box.x1) / 2), round(pixels.shape[0] - (box.y0 + box.y1) / 2)
        colours.append(tuple(int(v) for v in pixels[y, x]))
    return colours


@pytest.fixture()
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib figure saved while the test runs, in order, still saved as before: a test reads its
    titles and the data each panel shows, which a PNG does not give back."""
    from matplotlib.figure import Figure

    figures = []
    savefig = Figure.savefig

    def keep(fig: Figure, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def hand_set_run(run_dir: Path, data_dir: Path, set_weights: Callable) -> Path:
    """A run directory holding best.pth of the zoo's `net` (pytorch/examples' Net: conv1 10@5x5, pool, relu,
    conv2 20@5x5, pool, relu, fc1 50, relu, fc2 10) as `set_weights(model)` leaves it: no training."""
    import torch

    from vizkit.checkpoint import model_fields, save_checkpoint
    from vizkit.models import get_model

    torch.manual_seed(0)
    model = get_model("net").eval()
    with torch.no_grad():
        set_weights(model)
    run_dir.mkdir(parents=True)
    fields = {"config": {}, "classes": [str(i) for i in range(10)], "mean": [0.1307], "std": [0.3081],
              "input_shape": [1, 28, 28], "dataset": "mnist", "data_dir": str(data_dir.resolve()), "epoch": 1,
              "val_accuracy": 0.1}  # fmt: skip
    save_checkpoint(run_dir / "best.pth", model, **model_fields("net"), **fields)
    return run_dir


def known_weights(model) -> None:  # noqa: ANN001
    """conv1: weights 0 and bias c, so its channel c is c everywhere (24 x 24), whatever the input; conv2: the
    kernel from input channel i to output channel o is +1 where o == i, else -1; fc2: weights 0 and biases
    log 0.91 for class 3 and log 0.01 for the others, so the answer is 3 at 91.0%, whatever the input."""
    import math

    import torch

    model.conv1.weight.zero_()
    model.conv1.bias.copy_(torch.arange(10.0))
    model.conv2.weight.copy_(torch.eye(20, 10)[:, :, None, None] * 2 - 1)
    model.fc2.weight.zero_()
    model.fc2.bias.fill_(math.log(0.01))
    model.fc2.bias[3] = math.log(0.91)


@pytest.fixture()
def known_run(data_dir: Path, tmp_path: Path) -> Path:
    """A run of its own for each test (commands write into it) with known_weights."""
    return hand_set_run(tmp_path / "known", data_dir, known_weights)
