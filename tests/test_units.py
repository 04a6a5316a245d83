"""The model's map: receptive fields and FLOPs worked out by hand, and --list-layers --json."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES_NET
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vizkit import features
from vizkit.models import get_model
from vizkit.units import dataset_examples, model_map


def examples_net() -> nn.Module:
    return get_model(f"{EXAMPLES_NET}:Net", 1, 28, 10)


class Strided(nn.Module):
    """Stride, dilation and a functional pool, with fields worked out by hand (r += (d (k - 1)) j, j *= s)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, stride=2)  # r 3, j 2
        self.b = nn.Conv2d(2, 2, 3, dilation=2)  # k_eff 5: r 3 + 4 * 2 = 11, j 2
        self.pool = nn.MaxPool2d(2)  # r 11 + 1 * 2 = 13, j 4
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))  # r 3
        x = F.avg_pool2d(self.b(x), 1)  # a 1 x 1 pool: r 11, j 2
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))  # the whole 2 x 2 map: r 13 + (2 - 1) * 4 = 17


def test_receptive_fields_of_strides_and_dilation():
    rows = {r.name: r for r in model_map(Strided(), [1, 19, 19])}
    fields = {n: r.receptive_field for n, r in rows.items()}
    assert fields == {"a": 3, "relu": 3, "b": 11, "avg_pool2d": 11, "pool": 13, "flatten": 17, "fc": 17}
    assert rows["pool"].output_shape == (2, 2, 2)


def test_the_default_models_convs_see_3_8_and_18_pixels():
    rows = model_map(get_model("vizkit", 1, 28, 10), [1, 28, 28])
    assert [(r.name, r.receptive_field) for r in rows if r.kind == "conv"] == [
        ("conv1", 3),
        ("conv2", 8),
        ("conv3", 18),
    ]


def test_flops_add_up_to_torchs_own_count():
    for model in (get_model("vizkit", 1, 28, 10), examples_net()):
        model.eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 1, 28, 28))
        rows = model_map(model, [1, 28, 28])
        assert sum(r.flops for r in rows) == counter.get_total_flops()
    convs = {r.name: r.flops for r in rows if r.kind == "conv"}
    # pytorch/examples' conv2: 64 x 24 x 24 outputs, 32 x 3 x 3 multiply-adds each, 2 FLOPs per multiply-add
    assert convs["conv2"] == 64 * 24 * 24 * 32 * 9 * 2


def test_list_layers_json_from_a_bare_state_dict(tmp_path, capsys):
    net = examples_net()
    torch.save(net.state_dict(), tmp_path / "mnist_cnn.pt")  # what pytorch/examples saves
    argv = ["--checkpoint", str(tmp_path / "mnist_cnn.pt"), "--model", f"{EXAMPLES_NET}:Net", "--list-layers"]
    assert features.main([*argv, "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in steps][:4] == ["conv1", "relu", "conv2", "relu_1"]
    conv1 = steps[0]
    assert conv1 == {"name": "conv1", "kind": "conv", "op": "Conv2d", "output_shape": [32, 26, 26], "params": 320,
                     "flops": 32 * 26 * 26 * 9 * 2, "receptive_field": 3, "inputs": ["input"]}  # fmt: skip
    assert steps[-1]["name"] == "log_softmax" and steps[-1]["receptive_field"] == 28  # the flatten saw it all


def spikes() -> torch.Tensor:
    """Six 6 x 6 images: image i is 20 i everywhere but one pixel, 250 - 40 i, at (i, i)."""
    images = torch.stack([torch.full((1, 6, 6), 20 * i) for i in range(6)])
    for i in range(6):
        images[i, 0, i, i] = 250 - 40 * i
    return images.to(torch.uint8)


def test_dataset_examples_are_the_images_whose_maximum_is_highest():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))  # channel 0: the pixel; 1: minus the pixel
    model = nn.Sequential(conv)
    ex = dataset_examples(model, "0", spikes(), [0.0], [1.0], k=3, batch=4)  # two batches
    # channel 0's maximum: 250, 210, 170, max(60, 130), max(80, 90), max(100, 50); its spike is where it is
    assert ex.top[0].tolist() == [0, 1, 2] and ex.bottom[0].tolist() == [4, 5, 3]
    assert torch.allclose(ex.top_values[0], torch.tensor([250, 210, 170]) / 255)
    assert ex.where[0].tolist() == [[0, 0], [1, 1], [2, 2]]
    # channel 1's maximum is minus each image's darkest pixel: 0, -20, -40, -60, -80, -50 (image 5's spike)
    assert ex.top[1].tolist() == [0, 1, 2] and ex.bottom[1].tolist() == [4, 3, 5]
    assert torch.allclose(ex.bottom_values[1], -torch.tensor([80, 60, 50]) / 255)


def test_examples_command_draws_and_prints_them(small_run, data_dir, tmp_path, capsys):
    from PIL import Image

    from vizkit.checkpoint import open_checkpoint
    from vizkit.data import load_test_split

    argv = ["--run", str(small_run), "--layer", "conv1", "--examples", "4", "--data-dir", str(data_dir)]
    assert features.main([*argv, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["layer"] == "conv1" and len(shown["channels"]) == 16
    # the values are the channels' maxima over positions for those very test images, highest first
    model, ckpt = open_checkpoint(small_run / "best.pth")
    test = load_test_split("mnist", data_dir).images
    first = shown["channels"][0]
    with torch.no_grad():
        x = (test[first["top"]].float() / 255 - ckpt["mean"][0]) / ckpt["std"][0]
        peaks = model.conv1(x)[:, 0].flatten(1).amax(1)
    assert torch.allclose(peaks, torch.tensor(first["values"]), atol=1e-5)
    assert first["values"] == sorted(first["values"], reverse=True)
    assert features.main([*argv, "--out", str(tmp_path / "ex.png")]) == 0
    with Image.open(tmp_path / "ex.png") as img:
        # a 16-px title, an 11-px header and a row of 40-px tiles per channel, 3 px apart
        assert img.height == 16 + 11 + 16 * (40 + 3) + 3
        # channel 0's strongest example, top left of its row: the crop of test image top[0] around its field
        assert img.getpixel((26 + 40 + 3 + 10 + 20, 16 + 11 + 20)) != (255, 255, 255)


def test_training_logs_every_conv_steps_examples(small_run, data_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(small_run), size_guidance={"images": 0})
    ea.Reload()
    assert {"top_images/conv1", "top_images/conv2", "top_images/conv3"} <= set(ea.Tags()["images"])
    assert ea.Images("top_images/conv3")[0].step == 2  # the last epoch's, as the other evaluation images
    logged = json.loads((small_run / "examples" / "conv2.json").read_text())
    argv = ["--run", str(small_run), "--layer", "conv2", "--examples", "8", "--json", "--data-dir", str(data_dir)]
    assert features.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    # the runner's and the command's agree image for image (the values to float rounding: the runner's model
    # computes in channels_last)
    for a, b in zip(shown["channels"], logged["channels"], strict=True):
        assert (a["top"], a["bottom"]) == (b["top"], b["bottom"])
        assert torch.allclose(torch.tensor(a["values"]), torch.tensor(b["values"]), atol=1e-4)


@pytest.mark.slow  # examples over the test set twice and two figures, about 8 s
def test_each_epochs_weights_are_kept_and_drawn_from(small_run, data_dir, tmp_path, capsys):
    from vizkit import explain
    from vizkit.checkpoint import read_checkpoint

    assert sorted(p.name for p in (small_run / "epochs").iterdir()) == ["epoch-1.pth", "epoch-2.pth"]
    last, second = (read_checkpoint(p) for p in (small_run / "last.pth", small_run / "epochs" / "epoch-2.pth"))
    assert second["epoch"] == 2 and all(torch.equal(last["state_dict"][k], v) for k, v in second["state_dict"].items())
    base = ["--run", str(small_run), "--layer", "conv1", "--examples", "3", "--json", "--data-dir", str(data_dir)]
    shown = {}
    for epoch in ("1", "2"):
        assert features.main([*base, "--epoch", epoch]) == 0
        shown[epoch] = json.loads(capsys.readouterr().out)
    # epoch 1's weights are not epoch 2's: the channels respond to other images, and epoch 1's own numbers are
    # those of its own weights
    assert shown["1"] != shown["2"]
    model = get_model("vizkit", 1, 28, 10).eval()
    model.load_state_dict(read_checkpoint(small_run / "epochs" / "epoch-1.pth")["state_dict"])
    ex = dataset_examples(model, "conv1", load_test(data_dir), [0.1307], [0.3081], k=3)
    assert ex.top[0].tolist() == shown["1"]["channels"][0]["top"]
    assert features.main([*base, "--epoch", "7"]) == 2
    assert f"{small_run} has no weights of epoch 7; it keeps epochs 1, 2" in capsys.readouterr().err
    out = tmp_path / "cam.png"
    assert explain.main(["--run", str(small_run), "--epoch", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert out.is_file()
    # a figure of epoch N is named so, beside (not over) the best weights' figure of the same layer and input
    folder = tmp_path / "figures"
    for epoch in ([], ["--epoch", "1"]):
        assert (
            features.main(
                ["--run", str(small_run), "--layer", "conv1", "--data-dir", str(data_dir), "--out", str(folder), *epoch]
            )
            == 0
        )
    assert sorted(p.name for p in folder.iterdir()) == ["conv1-test-0-epoch-1.png", "conv1-test-0.png"]


def load_test(data_dir) -> torch.Tensor:  # noqa: ANN001
    from vizkit.data import load_test_split

    return load_test_split("mnist", data_dir).images


def test_global_pooling_sees_the_whole_map_and_unknown_resizing_says_so():
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert [r.receptive_field for r in model_map(pooled, [1, 28, 28])] == [3, 28, 28, 28]  # 3 + (26 - 1) x 1
    upsampled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    assert [r.receptive_field for r in model_map(upsampled, [1, 28, 28])] == [3, None, None]
