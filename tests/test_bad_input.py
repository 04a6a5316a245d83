"""Issue 6's list of bad input, through the real CLIs: one line naming the problem, exit code 2, no
traceback, and no existing file touched."""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vizkit import features, netron_view, predict, train
from vizkit.checkpoint import save_checkpoint
from vizkit.data import MNIST_FILES_MD5
from vizkit.models import get_model


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def env(small_run, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    shutil.copytree(small_run, run)
    blob = (run / "best.pth").read_bytes()
    (root / "cut.pth").write_bytes(blob[: len(blob) // 3])
    (root / "notes.pth").write_text("not a checkpoint")
    torch.save({"model": Evil()}, root / "evil.pth")
    fields = torch.load(run / "best.pth", weights_only=True)
    save_checkpoint(root / "other.pth", get_model("net"), **{k: v for k, v in fields.items() if k != "state_dict"})
    (root / "junk.onnx").write_bytes(b"\x08\x07 not protobuf at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buf, "JPEG")
    (root / "cut.jpg").write_bytes(buf.getvalue()[:300])
    (root / "text.png").write_text("hello")
    Image.new("1", (20_000, 20_000)).save(root / "bomb.png")
    (root / "empty-run").mkdir()
    (root / "bad.toml").write_text('model = "net"\nepochs = = 3\n')
    bad_data = root / "data" / "MNIST" / "raw"
    bad_data.mkdir(parents=True)
    for name in MNIST_FILES_MD5:
        shutil.copy(data_dir / "MNIST" / "raw" / name, bad_data / name)
    with open(bad_data / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(1000)  # the wrong size
    return root


CASES = {
    "truncated checkpoint": (features, ["--checkpoint", "{root}/cut.pth"], "not a readable checkpoint"),
    "checkpoint of another model": (predict, ["--checkpoint", "{root}/other.pth", "{root}/cut.jpg"], "does not match"),
    "not a checkpoint": (features, ["--checkpoint", "{root}/notes.pth"], "not a readable checkpoint"),
    "pickle carrying code": (predict, ["--checkpoint", "{root}/evil.pth", "x.png"], "refused by safe loading"),
    "ONNX file that is not a model": (netron_view, ["{root}/junk.onnx", "--no-browser"], "not an ONNX model"),
    "truncated image": (predict, ["--run", "{root}/run", "{root}/cut.jpg"], "could not be decoded"),
    "not an image": (predict, ["--run", "{root}/run", "{root}/text.png"], "not an image"),
    "decompression bomb": (predict, ["--run", "{root}/run", "{root}/bomb.png"], "shrink the photo first"),
    "run directory that does not exist": (features, ["--run", "{root}/no-such-run"], "does not exist"),
    "run directory without a checkpoint": (features, ["--run", "{root}/empty-run"], "holds no best.pth"),
    "port already taken": (netron_view, ["{root}/run", "--port", "{port}", "--no-browser"], "choose another --port"),
    "TOML syntax error": (train, ["--config", "{root}/bad.toml"], "line 2"),
    "--epochs 0": (train, ["--epochs", "0"], "'epochs' must be at least 1"),
    "negative learning rate": (train, ["--lr", "-0.1"], "'lr' must be a positive number"),
    "data files of the wrong size or MD5": (
        train,
        ["--data-dir", "{root}/data", "--run-dir", "{root}/new"],
        "wrong MD5",
    ),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, env, capsys):
    module, argv, message = CASES[case]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = [a.format(root=env, port=busy.getsockname()[1]) for a in argv]
        before = snapshot(env)
        code = module.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err
    assert snapshot(env) == before
    assert not (env / "new").exists()
