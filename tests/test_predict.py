import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from photos import digit_photo
from PIL import Image

from vizkit.data import load_test_split
from vizkit.predict import main

REPO = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, data_dir: Path, n: int = 5) -> list[int]:
    test = load_test_split("mnist", data_dir)
    rng = np.random.default_rng(7)
    folder.mkdir()
    for i in range(n):
        digit_photo(test.images[i, 0].numpy(), rng).save(folder / f"digit{i}.jpg", quality=90)
    return test.labels[:n].tolist()


@pytest.mark.slow
def test_json_lines_for_a_folder(mnist_run, data_dir, tmp_path, capsys):
    labels = make_photos(tmp_path / "photos", data_dir)
    assert main(["--run", str(mnist_run), "--json", str(tmp_path / "photos")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in rows] == [f"digit{i}.jpg" for i in range(5)]
    assert all(len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)
    assert sum(r["prediction"] == y for r, y in zip(rows, labels, strict=True)) >= 4


@pytest.mark.slow
def test_text_output_and_figure(mnist_run, data_dir, tmp_path, capsys):
    make_photos(tmp_path / "photos", data_dir, n=2)
    fig = tmp_path / "fig.png"
    assert main(["--checkpoint", str(mnist_run / "best.pth"), "--show", str(fig), str(tmp_path / "photos")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(tmp_path / "photos" / "digit0.jpg") + ": 7 (") and "; then " in lines[0]
    with Image.open(fig) as img:
        assert img.size[1] > 400 and img.convert("L").getextrema()[0] < 100


def test_bad_image_is_one_line(small_run, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["--run", str(small_run), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.jpg" in err


@pytest.mark.slow
def test_end_to_end_subprocess(mnist_run, data_dir, tmp_path):
    make_photos(tmp_path / "photos", data_dir, n=1)
    cmd = [sys.executable, "-m", "vizkit.predict", "--run", str(mnist_run), str(tmp_path / "photos" / "digit0.jpg")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ": 7 (" in result.stdout
