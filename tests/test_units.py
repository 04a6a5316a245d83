"""The model's map: receptive fields and FLOPs worked out by hand, and --list-layers --json."""

import json

import torch
import torch.nn.functional as F
from conftest import EXAMPLES_NET
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vizkit import features
from vizkit.models import get_model
from vizkit.units import model_map


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
