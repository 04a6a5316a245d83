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

from vizkit import explain, features, netron_view, predict, report, train
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
    (root / "folder.png").mkdir()  # an output path that is a folder
    (root / "empty.onnx").write_bytes(b"")
    Image.new("LAB", (40, 40)).save(root / "lab.tif")
    Image.fromarray(np.where(np.arange(1600).reshape(40, 40) % 40 < 20, 30, 220).astype(np.uint8)).save(
        root / "paper.png"
    )  # half ink, half paper: a photo that reads
    for name, change in {
        "empty-mean": {"mean": []},
        "string-mean": {"mean": ["0.1307"]},
        "three-means": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "nan-std": {"std": [float("nan")]},
        "data-dir-list": {"config": {**fields["config"], "data_dir": ["data"]}},
    }.items():
        torch.save({**fields, **change}, root / f"{name}.pth")
    for folder, files in {
        "one-class": {"a/1.png": "png"},
        "broken-images": {"a/1.png": "png", "b/2.png": "text"},
    }.items():
        for name, kind in files.items():
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            if kind == "png":
                Image.new("L", (8, 8), 128).save(root / folder / name)
            else:
                (root / folder / name).write_text("not an image")
    shutil.copytree(run, root / "edited-epochs")  # --resume after config.toml's epochs was edited by hand
    config = root / "edited-epochs" / "config.toml"
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 5"))
    for name, text in {"list": "[]", "empty": "{}"}.items():
        shutil.copytree(run, root / f"metrics-{name}")
        (root / f"metrics-{name}" / "metrics.json").write_text(text)
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
    "output path that is a folder (features --out)": (
        features,
        ["--run", "{root}/run", "--out", "{root}/folder.png"],
        "folder.png: Is a directory; choose another output path",
    ),
    "output path under a file (explain --out)": (
        explain,
        ["--run", "{root}/run", "--out", "{root}/notes.pth/why.png"],
        "cannot write",
    ),
    "output path that is a folder (predict --show)": (
        predict,
        ["--run", "{root}/run", "--show", "{root}/folder.png", "{root}/paper.png"],
        "folder.png: Is a directory",
    ),
    "output path under a file (report --out)": (
        report,
        ["{root}/run", "--out", "{root}/notes.pth/r.html"],
        "cannot write",
    ),
    "seed past what torch takes (flag)": (train, ["--seed", "100000000000000000000"], "'seed' must be from 0"),
    "seed past what torch takes (TOML)": (train, ["--set", "seed=100000000000000000000"], "'seed' must be from 0"),
    "learning rate 1e308": (train, ["--lr", "1e308"], "'lr' must be a positive number up to 1e+30"),
    "explain --steps 100000000": (explain, ["--run", "{root}/run", "--steps", "100000000"], "give 1 to 1024"),
    "netron_view --port 70000": (netron_view, ["{root}/run", "--port", "70000", "--no-browser"], "not a port"),
    "netron_view --port -1": (netron_view, ["{root}/run", "--port=-1", "--no-browser"], "not a port"),
    "three means for a one-channel dataset": (
        train,
        ["--set", "mean=[0.5,0.5,0.5]", "--set", "std=[0.5,0.5,0.5]", "--run-dir", "{root}/new"],
        "give one per channel",
    ),
    "--std nan": (features, ["--run", "{root}/run", "--std", "nan"], "std > 0"),
    "--std 0": (features, ["--run", "{root}/run", "--std", "0"], "std > 0"),
    "checkpoint with an empty mean": (features, ["--checkpoint", "{root}/empty-mean.pth"], "mean field is malformed"),
    "checkpoint with a string mean": (features, ["--checkpoint", "{root}/string-mean.pth"], "mean field is malformed"),
    "checkpoint with a mean per channel the model lacks": (
        features,
        ["--checkpoint", "{root}/three-means.pth"],
        "its mean, std field is malformed",
    ),
    "checkpoint with a NaN std": (features, ["--checkpoint", "{root}/nan-std.pth"], "std field is malformed"),
    "checkpoint whose data_dir is not a string": (
        features,
        ["--checkpoint", "{root}/data-dir-list.pth"],
        "config field is malformed",
    ),
    "metrics.json holding []": (report, ["{root}/metrics-list"], "not what vizkit writes"),
    "metrics.json holding {}": (report, ["{root}/metrics-empty"], "not what vizkit writes"),
    # a LAB TIFF is read as RGB (it was a traceback); a blank one then has nothing to read, in one line
    "a LAB TIFF": (predict, ["--run", "{root}/run", "{root}/lab.tif"], "no digit found in the image"),
    "an empty .onnx file": (netron_view, ["{root}/empty.onnx", "--no-browser"], "no graph in it"),
    # beyond the list: a person's own folder of images
    "a folder of images with one class": (train, ["--dataset", "{root}/one-class"], "a classifier needs two or more"),
    "a folder with a file that is no image": (
        train,
        ["--dataset", "{root}/broken-images", "--run-dir", "{root}/new"],
        "2.png is not a readable image",
    ),
    "a negative image_size": (train, ["--set", "image_size=-1"], "'image_size' must be 0"),
    "a --run-dir that is not UTF-8": (train, ["--run-dir", "{root}/run-\udcff"], "'run_dir' is not valid UTF-8"),
    "--resume after epochs was edited": (train, ["--resume", "{root}/edited-epochs"], "epochs: 2 -> 5"),
    "data files of the wrong size or MD5": (
        train,
        ["--data-dir", "{root}/data", "--run-dir", "{root}/new"],
        "wrong MD5",
    ),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file as it is, but a run's .lock, which a refused --resume held (and wrote its pid into) meanwhile."""
    files = (p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


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
