"""Shared fixtures: real MNIST (fetched once into the repo's data/ and reused) and one small trained run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
def data_dir() -> Path:
    from vizkit.data import ensure_mnist

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
