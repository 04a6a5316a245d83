"""vizkit's TensorBoard tab: a real `tensorboard` on 127.0.0.1, its routes, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, EXAMPLES_NET, chromium_page, tensorboard_server
from photos import digit_photo

from vizkit.tensorboard_plugin.plugin import find_runs

MARKER = "marker.txt"
TUTORIAL_004 = """
import torch.nn as nn

class CNN(nn.Module):  # tutorial 004's model: blocks of conv, ReLU and pool, then `out`
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.out = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.out(self.conv2(self.conv1(x)).view(x.size(0), -1))
"""
USER_MODEL = f'''
import pathlib
import torch.nn as nn
pathlib.Path(__file__).with_name("{MARKER}").write_text("imported")  # proves the code ran

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def write_events(folder: Path) -> None:
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar("Loss", 1.0, 1)


def code_dir(logdir: Path) -> Path:
    return logdir.with_name(logdir.name + "-code")


@pytest.fixture(scope="module")
def logdir(mnist_run: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run (with train/ and val/ sub-runs), a run with no checkpoint yet, and a run whose model file
    was edited after training (the trust rule refuses to import it)."""
    import torch

    from vizkit.checkpoint import model_fields, save_checkpoint

    root = tmp_path_factory.mktemp("logs")
    shutil.copytree(mnist_run, root / "mnist")
    for split in ("train", "val"):
        write_events(root / "mnist" / split)
    write_events(root / "no-checkpoint")
    code = code_dir(root) / "net.py"
    code.parent.mkdir()
    code.write_text(USER_MODEL)
    (root / "edited").mkdir()
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.fc = torch.nn.Linear(784, 10)
    save_checkpoint(root / "edited" / "best.pth", model, **model_fields(f"{code}:Net"), config={},
                    classes=[str(i) for i in range(10)], mean=[0.0], std=[1.0], input_shape=[1, 28, 28],
                    dataset="mnist", epoch=1, val_accuracy=0.5)  # fmt: skip
    code.write_text(USER_MODEL + "\n# edited after training\n")
    # a run that names code planted elsewhere in the shared log directory, with its right sha256
    planted = root / "elsewhere" / "net.py"
    planted.parent.mkdir()
    planted.write_text(USER_MODEL)
    (root / "planted").mkdir()
    save_checkpoint(root / "planted" / "best.pth", model, **model_fields(f"{planted}:Net"), config={},
                    classes=[str(i) for i in range(10)], mean=[0.0], std=[1.0], input_shape=[1, 28, 28],
                    dataset="mnist", epoch=1, val_accuracy=0.5)  # fmt: skip
    # a user's own model (untrained: the layers, not the answers, are what is checked), its file outside
    (code.parent / "cnn.py").write_text(TUTORIAL_004)
    (root / "tutorial-004").mkdir()
    spec = f"{code.parent / 'cnn.py'}:CNN"
    from vizkit.models import get_model

    save_checkpoint(root / "tutorial-004" / "best.pth", get_model(spec, 1, 28, 10), **model_fields(spec),
                    config={"data_dir": str(data_dir)}, classes=[str(i) for i in range(10)], mean=[0.1307],
                    std=[0.3081], input_shape=[1, 28, 28], dataset="mnist", epoch=1, val_accuracy=0.1)  # fmt: skip
    (root / "examples").mkdir()
    spec = f"{EXAMPLES_NET}:Net"  # pytorch/examples' Net, as its main.py writes it
    save_checkpoint(root / "examples" / "best.pth", get_model(spec, 1, 28, 10), **model_fields(spec),
                    config={}, classes=[str(i) for i in range(10)], mean=[0.1307], std=[0.3081],
                    input_shape=[1, 28, 28], dataset="mnist", data_dir=str(data_dir), epoch=1,
                    val_accuracy=0.1)  # fmt: skip
    # the trained run again, trained from a data folder this machine does not have
    ckpt = torch.load(root / "mnist" / "best.pth", weights_only=True)
    ckpt["config"]["data_dir"] = ckpt["data_dir"] = str(root.parent / "no-data-here")
    (root / "elsewhere-data").mkdir()
    torch.save(ckpt, root / "elsewhere-data" / "best.pth")
    for folder in (code.parent, planted.parent):
        (folder / MARKER).unlink(missing_ok=True)
    return root


@pytest.fixture(scope="module")
def tensorboard(logdir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with tensorboard_server(logdir, tmp_path_factory.mktemp("tb")) as server:
        yield server


def api(base: str, route: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    url = base + "data/plugin/vizkit/" + route
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_runs_that_are_symbolic_links_are_found_and_a_cycle_ends(tmp_path):
    store, logdir = tmp_path / "store", tmp_path / "logs"
    write_events(store / "kept-elsewhere")
    write_events(logdir / "here")
    (logdir / "linked").symlink_to(store / "kept-elsewhere", target_is_directory=True)
    (logdir / "here" / "loop").symlink_to(logdir, target_is_directory=True)  # back up to the log directory
    runs = find_runs(logdir)
    assert sorted(runs) == ["here", "linked"] and runs["linked"] == logdir / "linked"
    from vizkit.tensorboard_plugin.plugin import VizkitPlugin

    plugin = VizkitPlugin(type("Context", (), {"logdir": str(logdir)})())
    assert plugin._run_dir("linked") == logdir / "linked"  # the tab opens it by the name it lists
    assert plugin._run_dir("../store/kept-elsewhere") is None and plugin._run_dir(str(store)) is None


def test_runs_are_found_without_their_sub_runs(logdir):
    assert sorted(find_runs(logdir)) == [
        "edited",
        "elsewhere-data",
        "examples",
        "mnist",
        "no-checkpoint",
        "planted",
        "tutorial-004",
    ]


def test_tensorboard_starts_with_the_tab_and_without_torch():
    code = ("import sys; from tensorboard import default; names = [getattr(p, 'plugin_name', '') for p in "
            "default.get_plugins()]; print('vizkit' in names, 'torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_routes_answer_with_a_model_or_one_line_reason(tensorboard, logdir):
    base, log = tensorboard
    status, listing = api(base, "runs")
    runs = [r["run"] for r in listing["runs"]]
    assert status == 200 and runs == [
        "edited", "elsewhere-data", "examples", "mnist", "no-checkpoint", "planted", "tutorial-004"
    ]  # fmt: skip
    assert [r["checkpoint"] for r in listing["runs"]] == [True, True, True, True, False, True, True]
    _, model = api(base, "model?run=mnist")
    assert model["ok"] and model["classes"] == [str(i) for i in range(10)] and model["mean"] == [0.1307]
    assert len(bytes.fromhex(model["viridis"])) == 256 * 3
    for run, words in (("no-checkpoint", "no best.pth or last.pth"), ("edited", "has changed since training"),
                       ("planted", "which is the log directory"), ("../mnist", "no run named"),
                       ("/etc", "no run named")):  # fmt: skip
        _, answer = api(base, "model?" + urllib.parse.urlencode({"run": run}))
        assert not answer["ok"] and words in answer["reason"] and "\n" not in answer["reason"], answer
    assert not (code_dir(logdir) / MARKER).exists()  # refused before any of the edited code ran
    assert not (logdir / "elsewhere" / MARKER).exists()  # nor any code planted in the log directory
    _, answer = api(base, "update", {"run": "elsewhere-data", "source": "test", "index": 0})
    assert not answer["ok"] and "test set is not on this machine" in answer["reason"]
    assert not (logdir.parent / "no-data-here").exists()  # the tab downloads nothing
    _, answer = api(base, "update", {"run": "mnist", "source": "test", "index": 3})
    assert answer["ok"] and answer["label"] == 0 and answer["prediction"] == 0  # MNIST's test image 3 is a 0
    assert [layer["name"] for layer in answer["layers"]][:3] == ["conv1", "bn1", "relu1"]
    assert answer["layers"][-1]["output"] == "logits" and answer["layers"][-1]["labels"] == model["classes"]
    assert len(base64.b64decode(answer["layers"][0]["data"])) == 16 * 28 * 28  # conv1: 16 maps of 28 x 28
    for body, words in (({"run": "mnist", "source": "test", "index": 10_000}, "out of range"),
                        ({"run": "mnist", "source": "draw", "image": "data:image/png;base64,AAAA"}, "not an image"),
                        ({"run": "mnist", "source": "sing"}, "unknown input source"),
                        ({"run": "mnist", "source": "test", "target": 12}, "not one of"),
                        ({"run": "mnist", "source": "test", "target": True}, "not one of"),
                        ({"run": "mnist", "source": "test", "index": 1e300}, "picked by its number")):  # fmt: skip
        status, answer = api(base, "update", body)
        assert status == 200 and not answer["ok"] and words in answer["reason"], answer
    assert api(base, "update", b"{not json")[0] == 400
    lab = io.BytesIO()  # a photo in a mode PIL cannot make grey directly: it was "the model raised ValueError"
    digit_photo(np.full((28, 28), 0, np.uint8), np.random.default_rng(0)).convert("LAB").save(lab, format="TIFF")
    image = "data:image/tiff;base64," + base64.b64encode(lab.getvalue()).decode()
    _, answer = api(base, "update", {"run": "mnist", "source": "photo", "image": image})
    assert not answer["ok"] and answer["reason"].startswith("no digit found"), answer  # blank paper, read as such
    status, answer = api(base, "update", b"[" * 100_000 + b"]" * 100_000)  # nested past Python's recursion limit
    assert status == 400 and "\n" not in answer["reason"] and "RecursionError" not in log.read_text()
    # the user's own model: each block is named with the layer whose output it hands on
    _, answer = api(base, "update", {"run": "tutorial-004", "source": "test", "index": 0})
    assert answer["ok"], answer
    layers = [(layer["name"], layer["blocks"], layer["kind"]) for layer in answer["layers"]]
    assert layers == [("conv1.0", [], "conv"), ("conv1.1", [], "activation"), ("conv1.2", ["conv1"], "pool"),
                      ("conv2.0", [], "conv"), ("conv2.1", [], "activation"), ("conv2.2", ["conv2"], "pool"),
                      ("out", [], "linear")]  # fmt: skip
    assert answer["layers"][-1]["output"] == "logits" and answer["cam"]["layer"] == "conv2.1"
    # pytorch/examples' Net: its functional steps, and log-probabilities out, named by class
    _, answer = api(base, "update", {"run": "examples", "source": "test", "index": 0})
    assert answer["ok"], answer
    assert [(layer["name"], layer["op"], layer["inputs"]) for layer in answer["layers"]][:5] == [
        ("conv1", "Conv2d", ["input"]), ("relu", "F.relu", ["conv1"]), ("conv2", "Conv2d", ["relu"]),
        ("relu_1", "F.relu", ["conv2"]), ("max_pool2d", "F.max_pool2d", ["relu_1"]),
    ]  # fmt: skip
    assert answer["layers"][-1]["name"] == "log_softmax" and answer["layers"][-1]["output"] == "log-probabilities"
    assert answer["cam"]["layer"] == "relu_1" and answer["layers"][-1]["labels"] == model["classes"]
    assert "Traceback" not in log.read_text()  # every failure above was an answer, not an exception


def png_data_url(image) -> str:  # noqa: ANN001
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def assert_conv1_drawn(frame, response) -> None:  # noqa: ANN001
    """The conv1 card's tiles show the last answer's maps: each pixel is viridis of its value (known answer)."""
    answer = response.json()
    conv1 = answer["layers"][0]
    levels = np.frombuffer(base64.b64decode(conv1["data"]), np.uint8).reshape(16, 28, 28)
    lut = np.frombuffer(bytes.fromhex(frame.locator("#run").evaluate("() => window.vizkitViridis")), np.uint8)
    # tiles of 56 px (28 px maps at zoom 2) with 4 px gaps and a 12 px number above; the centre of each map pixel
    drawn = frame.locator(".layer > canvas").first.evaluate(
        "c => [c.width, [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data]]"
    )
    width, rgba = drawn[0], np.array(drawn[1], np.uint8).reshape(-1, drawn[0], 4)
    cols = width // 60
    for channel in (0, 5, 15):
        x0, y0 = (channel % cols) * 60, (channel // cols) * (56 + 12 + 4) + 12
        for r, c in ((3, 3), (14, 14), (20, 9)):
            pixel, level = rgba[y0 + 2 * r + 1, x0 + 2 * c + 1, :3], int(levels[channel, r, c])
            assert pixel.tolist() == lut[3 * level : 3 * level + 3].tolist(), (channel, r, c)


@pytest.mark.slow  # a browser, three runs and a run list that changes: about 20 s
def test_the_tab_in_a_real_browser(tensorboard, logdir, data_dir):
    """Draw a 7 stroke by stroke, pick a test image, drop a photo; every request stays on 127.0.0.1. Runs
    started after the page opened join the list, and a run waiting for its first epoch opens once it has one."""
    from vizkit.data import load_test_split

    base, log = tensorboard
    hosts, updates = set(), []
    test = load_test_split("mnist", data_dir)
    photo = digit_photo(test.images[1, 0].numpy(), np.random.default_rng(0))  # test image 1 is a 2
    with chromium_page() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("request", lambda r: hosts.add(urllib.parse.urlsplit(r.url).netloc))
        page.on("request", lambda r: updates.append(r.url) if r.url.endswith("/update") else None)
        answers = []
        page.on("response", lambda r: answers.append(r) if r.url.endswith("/update") else None)
        page.goto(base + "#vizkit")
        page.wait_for_selector("iframe")
        frame = page.frame_locator("iframe")
        frame.locator("#run").select_option("mnist")
        frame.locator("#prediction").filter(has_text="label").wait_for(timeout=60_000)  # test image 0 first

        frame.locator("[data-source=draw]").click()
        pad = frame.locator("#pad").bounding_box()
        before = len(updates)
        strokes = [[(60, 60), (210, 60)], [(210, 60), (120, 240)]]  # a 7: the bar, then the stem
        for stroke in strokes:
            page.mouse.move(pad["x"] + stroke[0][0], pad["y"] + stroke[0][1])
            page.mouse.down()
            for t in np.linspace(0, 1, 12)[1:]:
                x = stroke[0][0] + t * (stroke[1][0] - stroke[0][0])
                y = stroke[0][1] + t * (stroke[1][1] - stroke[0][1])
                page.mouse.move(pad["x"] + x, pad["y"] + y)
                page.wait_for_timeout(30)
            page.mouse.up()
        page.wait_for_timeout(1500)
        assert len(updates) - before >= 3  # it answered while the strokes were drawn, not only at the end
        assert frame.locator("#prediction").inner_text().startswith("7")
        layers = frame.locator(".layer")
        assert layers.count() == 15  # conv1 ... pool3, fc1, relu4, fc2 of the default model
        assert "conv1 Conv2d · 16×28×28 · conv · from input" in layers.first.inner_text()
        assert "bn1 BatchNorm2d · 16×28×28 · norm · from conv1" in layers.nth(1).inner_text()
        assert "logits, one bar per class" in layers.last.inner_text()
        size = frame.locator(".layer > canvas").first.evaluate("c => [c.width, c.height]")
        assert size[0] >= 8 * 36 and size[1] >= 36  # tiles of at least 36 px
        assert_conv1_drawn(frame, answers[-1])

        frame.locator("[data-source=test]").click()
        frame.locator("#index").fill("3")
        frame.locator("#show").click()
        frame.locator("#prediction").filter(has_text="label 0").wait_for(timeout=30_000)
        assert frame.locator("#prediction").inner_text().startswith("0")
        page.wait_for_timeout(300)
        assert_conv1_drawn(frame, answers[-1])  # the tiles follow each new input, not only the first

        frame.locator("[data-source=photo]").click()
        drop = frame.locator("#drop").element_handle()
        transfer = drop.evaluate_handle(
            """(zone, data) => {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                const t = new DataTransfer();
                t.items.add(new File([bytes], 'two.png', {type: 'image/png'}));
                return t;
            }""",
            png_data_url(photo),
        )
        drop.dispatch_event("drop", {"dataTransfer": transfer})
        frame.locator("#drop").filter(has_text="two.png").wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        assert frame.locator("#prediction").inner_text().startswith("2")
        assert frame.locator("#seen-size").inner_text() == "(28×28)"

        # pytorch/examples' Net: each functional step is a card that says what it is and what feeds it
        frame.locator("#run").select_option("examples")
        frame.locator(".layer[data-layer=log_softmax]").wait_for(timeout=30_000)
        cards = frame.locator(".layer h3")
        assert cards.count() == 9  # conv1, relu, conv2, relu_1, max_pool2d, fc1, relu_2, fc2, log_softmax
        # with what one unit sees (3 x 3 kernels twice: 5 px; the 2 x 2 pool: 6) and, where there are any, FLOPs
        assert cards.nth(2).inner_text() == "conv2 Conv2d · 64×24×24 · conv · from relu · sees 5×5 px · 21.2M FLOPs"
        assert cards.nth(3).inner_text() == "relu_1 F.relu · 64×24×24 · activation · from conv2 · sees 5×5 px"
        assert cards.nth(4).inner_text() == "max_pool2d F.max_pool2d · 64×12×12 · pool · from relu_1 · sees 6×6 px"
        assert (
            cards.last.inner_text()
            == "log_softmax F.log_softmax · 10 · log-probabilities, one bar per class · from fc2 · sees 28×28 px"
        )
        assert "on relu_1" in frame.locator("#cam-layer").inner_text()

        frame.locator("#run").select_option("edited")
        frame.locator("#status.error").wait_for(timeout=30_000)
        assert "has changed since training" in frame.locator("#status").inner_text()

        run_list = frame.locator("#run")
        try:
            (logdir / "later").mkdir()
            shutil.copy2(logdir / "mnist" / "best.pth", logdir / "later")
            write_events(logdir / "waiting")  # training has started, its first epoch has not ended
            run_list.dispatch_event("pointerdown")  # the person reaches for the list
            frame.locator("#run option[value=later]").wait_for(state="attached", timeout=30_000)
            assert run_list.evaluate("s => s.value") == "edited"  # a new run does not take the person's choice
            assert frame.locator("#run option[value=waiting]").inner_text() == "waiting (no checkpoint)"
            run_list.select_option("waiting")
            frame.locator("#status.error").filter(has_text="no best.pth").wait_for(timeout=30_000)
            shutil.copy2(logdir / "mnist" / "best.pth", logdir / "waiting")  # its first epoch ends
            run_list.dispatch_event("pointerdown")
            frame.locator("#status:not(.error)").filter(has_text="from waiting/best.pth").wait_for(timeout=30_000)
            assert frame.locator("#run option[value=waiting]").inner_text() == "waiting"
            assert run_list.evaluate("s => s.value") == "waiting"  # the person's choice stays chosen
        finally:
            shutil.rmtree(logdir / "later", ignore_errors=True)
            shutil.rmtree(logdir / "waiting", ignore_errors=True)
        browser.close()
    assert hosts == {urllib.parse.urlsplit(base).netloc}, hosts  # nothing but TensorBoard's own server
    assert "Traceback" not in log.read_text()
