"""Shared fixtures: real MNIST (fetched once into the repo's data/ and reused) and one small trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("VIZKIT_TEST_DATA", REPO / "data"))


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
