import base64
import io
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from vizkit.report import main

REPO = Path(__file__).resolve().parents[1]


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append((a.get("alt", ""), a.get("src", "")))
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        self._in_heading = tag in ("h2", "h3", "h4")

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data.strip())
            self._in_heading = False


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def test_one_run(small_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main([str(small_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = parse(out)
    for heading in ("Final metrics", "Config", "Curves", "Confusion matrix", "Top losses", "Feature maps",
                    "conv1", "conv2", "conv3", "Kernels of conv1", "What each channel of conv3 responds to",
                    "Model summary"):  # fmt: skip
        assert heading in page.headings, heading
    assert len(page.images) == 8  # curves, confusion, top losses, 3 feature grids, kernels, conv3's examples
    for alt, src in page.images:
        assert src.startswith("data:image/png;base64,"), alt
    with Image.open(io.BytesIO(base64.b64decode(page.images[0][1].split(",", 1)[1]))) as img:
        assert img.size[0] > 100
    text = out.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched: it opens offline
    assert all(link.startswith("data:") for link in page.links)


@pytest.mark.slow
def test_comparison_of_two_runs(small_run, mnist_run, tmp_path):
    out = tmp_path / "c.html"
    cmd = [sys.executable, "-m", "vizkit.report", str(small_run), str(mnist_run), "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    page = parse(out)
    assert "Comparison" in page.headings and "Configs (differences highlighted)" in page.headings
    assert "class=diff><td>epochs</td>" in out.read_text()  # 2 epochs against 1


def test_unfinished_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main([str(tmp_path / "run")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
