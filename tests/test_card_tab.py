"""A channel's card and the epoch slider in vizkit's tab, through TensorBoard's own server and a real browser.

The run keeps two epochs' weights: epoch 1 a freshly initialised model (seed 0), epoch 2 the trained one (also
best.pth), so what the page shows can be told apart, and checked against torch's own conv on the same weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import chromium_page, tensorboard_server
from test_tensorboard_plugin import api

from vizkit import rundir
from vizkit.checkpoint import read_checkpoint, save_checkpoint
from vizkit.models import get_model

ORANGE = [255, 152, 0]  # the receptive field's frame on the card's input


@pytest.fixture(scope="module")
def kept(mnist_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    run = root / "kept"
    shutil.copytree(mnist_run, run)
    shutil.rmtree(run / rundir.EPOCHS, ignore_errors=True)
    best = read_checkpoint(run / rundir.BEST)
    fields = {k: v for k, v in best.items() if k not in ("state_dict", "signature")}
    torch.manual_seed(0)
    fresh = get_model("vizkit", 1, 28, 10)
    trained = get_model("vizkit", 1, 28, 10)
    trained.load_state_dict(best["state_dict"])
    (run / rundir.EPOCHS).mkdir()
    save_checkpoint(rundir.epoch_file(run, 1), fresh, **{**fields, "epoch": 1})
    save_checkpoint(rundir.epoch_file(run, 2), trained, **{**fields, "epoch": 2})
    save_checkpoint(run / rundir.BEST, trained, **{**fields, "epoch": 2})
    return root


@pytest.fixture(scope="module")
def server(kept: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with tensorboard_server(kept, tmp_path_factory.mktemp("tb")) as running:
        yield running


def conv1(run: Path, epoch: int | None, index: int, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1's output for test image `index` by torch's own F.conv2d, and its weights: best.pth's or epoch N's."""
    from vizkit.data import load_test_split

    ckpt = read_checkpoint(run / rundir.BEST if epoch is None else rundir.epoch_file(run, epoch))
    w, b = ckpt["state_dict"]["conv1.weight"], ckpt["state_dict"].get("conv1.bias")
    x = load_test_split("mnist", data_dir).images[index : index + 1].float() / 255
    x = (x - ckpt["mean"][0]) / ckpt["std"][0]
    return F.conv2d(x, w, b, padding=1)[0], w


def test_card_and_examples_routes_answer_or_say_why(server, kept):
    base, _ = server
    status, card = api(base, "card", {"run": "kept", "source": "test", "index": 0, "layer": "relu1", "channel": 5,
                                       "row": 10, "col": 20})  # fmt: skip
    assert status == 200 and card["ok"], card
    assert (card["layer"], card["channel"], card["shown"]["name"], card["row"], card["col"]) == (
        "relu1",
        5,
        "conv1",
        10,
        20,
    )
    assert card["box"] == [9, 19, 11, 21]  # conv1 (3 x 3, padding 1) at (10, 20) sees rows 9-11, columns 19-21
    assert [t["name"] for t in card["arithmetic"]["then"]] == ["bn1", "relu1", "pool1"]
    for body, reason in [
        ({"layer": "fc1"}, "fc1 gives 1-d values, not channels of maps: no card for it"),
        ({"layer": "nope"}, "no layer named 'nope'"),
        ({"layer": "conv1", "channel": 16}, "channel of conv1 16 is out of range: 0 to 15"),
        ({"layer": "conv1", "row": -1}, "row -1 is out of range: 0 to 27"),
        ({"layer": "conv1", "epoch": 7}, "kept has no weights of epoch 7; it keeps epochs 1, 2"),
        ({"layer": "conv1", "epoch": 2.0}, "kept has no weights of epoch 2.0; it keeps epochs 1, 2"),
    ]:
        status, answer = api(base, "card", {"run": "kept", "source": "test", "index": 0, **body})
        assert status == 200 and answer["ok"] is False and answer["reason"].startswith(reason), answer
    status, answer = api(base, "model?run=kept")
    assert answer["epochs"] == [1, 2] and answer["epoch"] == 2


@pytest.mark.slow
def test_click_a_tile_move_the_pointer_drag_the_epoch_slider(server, kept, data_dir):
    base, log = server
    run = kept / "kept"
    with chromium_page() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base + "#vizkit")
        frame = page.frame_locator("iframe")
        frame.locator("#prediction").filter(has_text="label").wait_for(timeout=60_000)  # test image 0, best.pth
        assert frame.locator("#epoch-label").inner_text() == "2 of 2 (best)"

        # click conv1's tile of channel 5: the card opens on that channel, at its strongest unit
        tiles = frame.locator(".layer[data-layer=conv1] > canvas")
        at = tiles.evaluate("c => c.layout")
        x = (5 % at["cols"]) * (at["tw"] + 4) + at["tw"] // 2
        y = (5 // at["cols"]) * (at["th"] + 12 + 4) + 12 + at["th"] // 2
        tiles.click(position={"x": x, "y": y})
        frame.locator("#card-sums .total").wait_for(timeout=30_000)
        card = frame.locator("#card").evaluate("() => window.vizkitCard")
        assert (card["layer"], card["channel"], card["epoch"]) == ("conv1", 5, 2)
        out, weights = conv1(run, None, 0, data_dir)
        assert (card["row"], card["col"]) == divmod(int(out[5].argmax()), 28)
        assert np.allclose(card["kernels"]["values"], weights[5].reshape(1, 9), atol=1e-5)
        assert "conv1 · channel 5 · epoch 2" in frame.locator("#card-title").inner_text()

        # the pointer over the card's map: unit (10, 20), its arithmetic equal to torch's conv, its field outlined
        area = frame.locator("#card-map").bounding_box()
        page.mouse.move(area["x"] + (20.5 / 28) * area["width"], area["y"] + (10.5 / 28) * area["height"])
        frame.locator("#card-map-label").filter(has_text="unit (10, 20)").wait_for(timeout=30_000)
        card = frame.locator("#card").evaluate("() => window.vizkitCard")
        a = card["arithmetic"]
        assert a["value"] == pytest.approx(float(out[5, 10, 20]), abs=1e-4)
        assert a["forward"] == pytest.approx(float(out[5, 10, 20]), abs=1e-4)
        assert sum(t["total"] for t in a["terms"]) + a["bias"] == pytest.approx(a["value"], abs=1e-5)
        text = frame.locator("#card-sums").inner_text()
        assert f"= {a['value']:.4f} = the forward pass's {a['forward']:.4f}" in text
        assert "then pool1 (MaxPool2d): the max of" in text
        pixels = frame.locator("#card-input").evaluate(
            "c => [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data]"
        )
        rgba = np.array(pixels, np.uint8).reshape(196, 196, 4)
        top, left = card["box"][:2]
        assert rgba[top * 7 + 10, left * 7 + 1, :3].tolist() == ORANGE  # the frame's left side, 7 px a pixel
        frame.locator("#card-examples figure").nth(8).wait_for(timeout=60_000)
        examples = frame.locator("#card").evaluate("() => window.vizkitExamples")
        assert examples["epoch"] == 2 and len(examples["top"]) == 8

        # drag the slider to epoch 1: every layer, the prediction and the card follow epoch 1's weights
        slider = frame.locator("#epoch").bounding_box()
        page.mouse.move(slider["x"] + slider["width"] - 4, slider["y"] + slider["height"] / 2)
        page.mouse.down()
        page.mouse.move(slider["x"] + 2, slider["y"] + slider["height"] / 2, steps=8)
        page.mouse.up()
        frame.locator("#timing").filter(has_text="epoch 1's weights").wait_for(timeout=30_000)
        assert frame.locator("#epoch-label").inner_text() == "1 of 2"
        frame.locator("#card-title").filter(has_text="epoch 1").wait_for(timeout=30_000)
        card = frame.locator("#card").evaluate("() => window.vizkitCard")
        out1, weights1 = conv1(run, 1, 0, data_dir)
        assert np.allclose(card["kernels"]["values"], weights1[5].reshape(1, 9), atol=1e-5)
        assert card["arithmetic"]["forward"] == pytest.approx(float(out1[5, card["row"], card["col"]]), abs=1e-4)
        frame.locator("#card-examples-note").filter(has_text="epoch 1,").wait_for(timeout=60_000)
        assert frame.locator("#card").evaluate("() => window.vizkitExamples")["epoch"] == 1
        browser.close()
    assert "Traceback" not in log.read_text()
