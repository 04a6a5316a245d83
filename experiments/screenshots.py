"""The README's TensorBoard screenshots, taken in headless Chromium from a real run: docs/tensorboard-*.png.

    python experiments/screenshots.py                      # trains 3 epochs on 10,000 images first (~1 min)
    python experiments/screenshots.py --run runs/X         # or shows a run you have

Starts TensorBoard on 127.0.0.1 in this process, on a log directory holding a copy of the run, and drives
Debian's Chromium through Playwright (never a downloaded browser): Time Series at smoothing 0, the Images
tab's feature maps, HParams, and vizkit's tab with a 7 drawn stroke by stroke (then a channel's card, and the
epoch slider dragged back to epoch 1), on the default model and on
pytorch/examples' mnist Net as its main.py writes it (F.relu, F.max_pool2d, log_softmax), trained for one
epoch with `--model` (another minute).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SEVEN = [[(60, 60), (215, 60)], [(215, 60), (125, 245)]]  # the bar, then the stem
EXAMPLES_NET = Path(__file__).with_name("pytorch_examples_net.py")  # pytorch/examples' mnist Net, as written


def train(run_dir: Path, data_dir: str, *extra: str, epochs: int = 3) -> None:
    cmd = [sys.executable, "-m", "vizkit.train", "--epochs", str(epochs), "--limit-train", "10000", "--data-dir",
           data_dir, "--run-dir", str(run_dir), *extra]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO)


def draw(page, frame, strokes: list) -> None:  # noqa: ANN001
    box = frame.locator("#pad").bounding_box()
    for (x0, y0), (x1, y1) in strokes:
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        for i in range(1, 13):
            page.mouse.move(box["x"] + x0 + i / 12 * (x1 - x0), box["y"] + y0 + i / 12 * (y1 - y0))
            page.wait_for_timeout(40)
        page.mouse.up()
    page.wait_for_timeout(1500)


def shoot(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})

        page.goto(url + "?smoothing=0#timeseries")  # the README's URL: per-epoch points as logged
        page.locator("scalar-card").nth(1).wait_for(timeout=60_000)
        outliers = page.get_by_text("Ignore outliers in chart scaling")  # it cuts off a 3-point curve's first point
        if outliers.count():
            outliers.first.click()
        page.wait_for_timeout(2000)
        written.append(out / "tensorboard-timeseries.png")
        page.screenshot(path=written[-1])

        page.goto(url + "#images")
        page.locator("img").nth(4).wait_for(timeout=60_000)
        page.get_by_text("features/conv2", exact=True).first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        written.append(out / "tensorboard-images.png")
        page.screenshot(path=written[-1])

        page.goto(url + "#hparams")
        page.locator("tf-hparams-table-view").get_by_text("optimizer", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        written.append(out / "tensorboard-hparams.png")
        page.screenshot(path=written[-1], clip={"x": 0, "y": 0, "width": 1400, "height": 300})

        page.set_viewport_size({"width": 1400, "height": 1300})
        page.goto(url + "#vizkit")
        frame = page.frame_locator("iframe")
        frame.locator("#run").select_option("mnist-3-epochs")
        frame.locator("#prediction").filter(has_text="label").wait_for(timeout=60_000)
        frame.locator("[data-source=draw]").click()
        draw(page, frame, SEVEN)
        written.append(out / "tensorboard-vizkit-tab.png")
        page.screenshot(path=written[-1])

        # a channel's card: click conv2's tile of channel 5, the pointer on a unit of its map, its top images
        tiles = frame.locator(".layer[data-layer=conv2] > canvas")
        tiles.scroll_into_view_if_needed()
        at = tiles.evaluate("c => c.layout")
        x, y = (
            (5 % at["cols"]) * (at["tw"] + 4) + at["tw"] // 2,
            (5 // at["cols"]) * (at["th"] + 16) + 12 + at["th"] // 2,
        )
        tiles.click(position={"x": x, "y": y})
        frame.locator("#card-sums .total").wait_for(timeout=60_000)
        area = frame.locator("#card-map").bounding_box()
        page.mouse.move(area["x"] + 0.45 * area["width"], area["y"] + 0.3 * area["height"])
        frame.locator("#card-examples figure").nth(8).wait_for(timeout=120_000)
        frame.locator("#input-panel").scroll_into_view_if_needed()  # the drawing and prediction in view; the card stays
        page.wait_for_timeout(1000)
        written.append(out / "tensorboard-vizkit-card.png")
        page.screenshot(path=written[-1])

        # the epoch slider dragged to epoch 1: every layer, the prediction and the card through epoch 1's weights
        slider = frame.locator("#epoch").bounding_box()
        page.mouse.move(slider["x"] + slider["width"] - 4, slider["y"] + slider["height"] / 2)
        page.mouse.down()
        page.mouse.move(slider["x"] + 2, slider["y"] + slider["height"] / 2, steps=8)
        page.mouse.up()
        frame.locator("#card-examples-note").filter(has_text="epoch 1,").wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        written.append(out / "tensorboard-vizkit-epoch-1.png")
        page.screenshot(path=written[-1])

        frame.locator("#run").select_option("pytorch-examples-net")  # the drawing stays: the same 7
        frame.locator(".layer[data-layer=log_softmax]").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        written.append(out / "tensorboard-vizkit-tab-functional.png")
        page.screenshot(path=written[-1])
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a run directory to show (default: train a small one)")
    p.add_argument("--data-dir", default=str(REPO / "data"))
    p.add_argument("--out", default=str(REPO / "docs"))
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    from tensorboard import default, program

    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "runs"
        run = logdir / "mnist-3-epochs"
        if args.run:
            shutil.copytree(args.run, run)
        else:
            train(run, args.data_dir)
        train(logdir / "pytorch-examples-net", args.data_dir, "--model", f"{EXAMPLES_NET}:Net", epochs=1)
        tb = program.TensorBoard(plugins=default.get_plugins())
        tb.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"])
        url = tb.launch()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for path in shoot(url, Path(args.out)):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
