"""Shared fixtures: real MNIST (fetched once into the repo's data/ and reused) and one small trained run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("VIZKIT_TEST_DATA", REPO / "data"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium_page():  # noqa: ANN201
    """Playwright driving Debian's Chromium (never a downloaded browser); skipped with the reason if absent."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    return sync_api.sync_playwright()


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
    assert main(argv + ["--set", "log_every=5"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def mnist_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model after one epoch on all of MNIST (about 98.5% on the test set), no event log."""
    from vizkit.train import main

    run_dir = tmp_path_factory.mktemp("runs") / "mnist"
    argv = ["--epochs", "1", "--log", "off", "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
    assert main(argv) == 0
    return run_dir
