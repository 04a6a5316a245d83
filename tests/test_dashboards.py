"""What a person sees first in TensorBoard on a vizkit run, checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from conftest import CHROMIUM, chromium_page, tensorboard_server


@pytest.fixture(scope="module")
def dashboards(small_run: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """TensorBoard on a log directory holding one run with full logging, and a browser page."""
    logdir = tmp_path_factory.mktemp("logs")
    shutil.copytree(small_run, logdir / "small")
    with tensorboard_server(logdir, tmp_path_factory.mktemp("tb")) as (url, _), chromium_page() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield url, browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_time_series_opens_on_loss_and_accuracy_with_train_and_val_together(dashboards):
    url, page = dashboards
    page.goto(url + "?smoothing=0#timeseries")
    page.locator("scalar-card").nth(1).wait_for(timeout=60_000)
    groups = page.locator("metrics-card-group-toolbar").all_inner_texts()
    names = [re.match(r"[A-Za-z_]+", g.strip()).group() for g in groups[:3]]  # "Loss 2 cards" -> "Loss"
    assert names == ["Accuracy", "Loss", "activations"]  # TensorBoard opens the first two groups
    for name, card in zip(("Accuracy", "Loss"), page.locator("scalar-card").all()[:2], strict=True):
        card.locator("text=small/val").wait_for(timeout=30_000)
        text = card.inner_text()
        assert text.startswith(name) and "small/train" in text and "small/val" in text
        assert "Smoothed" not in text  # ?smoothing=0 took: the legend has no smoothed column
    page.goto(url + "#timeseries")  # TensorBoard's default (0.6) smooths, and says so in the legend
    page.reload()
    page.locator("scalar-card").first.locator("text=Smoothed").wait_for(timeout=60_000)


def test_feature_maps_are_shown_at_full_size_in_the_images_tab(dashboards):
    url, page = dashboards
    page.goto(url + "#images")
    page.locator("img").nth(4).wait_for(timeout=60_000)  # confusion matrix, top losses, conv1, conv2, conv3
    page.wait_for_timeout(1000)
    shown = {}
    for src, natural, width in page.locator("img").evaluate_all(
        "imgs => imgs.map(i => [i.src, i.naturalWidth, i.getBoundingClientRect().width])"
    ):
        key = urllib.parse.parse_qs(urllib.parse.urlsplit(src).query)["blob_key"][0]
        run, tag = json.loads(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)))[1:3]  # ["", run, tag, ...]
        shown[tag] = (natural, width)
    natural, width = shown["features/conv3"]
    assert natural == 3 + 8 * (28 + 3) + 50  # tiles.layer_image: 8 tiles of 28 px and a colour bar
    assert width >= natural  # not shrunk to fit the card: each tile is at least 28 px on screen
    assert all(width >= natural for tag, (natural, width) in shown.items() if tag.startswith("features/"))


def test_hparams_shows_model_optimizer_lr_epochs_and_batch_size(dashboards):
    url, page = dashboards
    page.goto(url + "#hparams")
    table = page.locator("tf-hparams-table-view")
    table.locator("text=optimizer").first.wait_for(timeout=60_000)
    for column in ("batch_size", "epochs", "lr", "model", "optimizer", "vizkit", "adam"):  # columns, the run's row
        assert table.get_by_text(column, exact=True).count() >= 1, column
    for hidden in ("augment", "dataset", "seed"):  # the rest stay in the side panel's list
        assert table.get_by_text(hidden, exact=True).count() == 0, hidden
