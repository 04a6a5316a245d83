"""A channel's card (vizkit/card.py): its arithmetic equals the forward pass at every pixel, and a hand-worked unit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vizkit.card import arithmetic, chain_after, source_conv
from vizkit.graph import forward_graph
from vizkit.models import get_model


class Functional(nn.Module):
    """pytorch/examples' style: F.relu and F.max_pool2d, a strided, dilated, padded conv, and groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.bn(self.conv2(x))), 2)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_a_hand_worked_unit() -> None:
    """Kernel [[1, 2], [0, -1]], bias 0.5, on the image 1..9: unit (0, 1) = 2*1 + 3*2 + 5*0 + 6*(-1) + 0.5 = 2.5;
    the whole map is [[0.5, 2.5], [6.5, 8.5]], all kept by the ReLU, and the 2x2 max pool over it is 8.5."""
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]]))
        model[0].bias.fill_(0.5)
    image = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]) / 10  # pixels in [0, 1]
    a = arithmetic(model.eval(), [0.0], [0.1], image, "0", 0, 0, 1)  # std 0.1: the conv sees 1 .. 9
    assert [t.patch.tolist() for t in a.terms] == [[[2.0, 3.0], [5.0, 6.0]]]
    assert a.terms[0].total == pytest.approx(2 + 6 + 0 - 6)
    assert (a.bias, a.value, a.forward) == (0.5, pytest.approx(2.5), pytest.approx(2.5))
    relu, pool = a.then
    assert (relu.name, relu.value, relu.forward) == ("1", pytest.approx(2.5), pytest.approx(2.5))
    assert (pool.name, pool.row, pool.col, pool.how) == ("2", 0, 0, "max")
    assert pool.window == [[0.5, 2.5], [6.5, 8.5]]
    assert pool.value == pool.forward == 8.5


ZOO = [pytest.param(lambda n=name: get_model(n, 1, 28, 10), marks=pytest.mark.slow, id=name) for name in ("net",)]


@pytest.mark.parametrize("make", [pytest.param(Functional, id="functional"), *ZOO])
def test_every_pixel_equals_the_forward_pass(make) -> None:  # noqa: ANN001
    model = _randomised(make())
    size = 16 if isinstance(model, Functional) else 28
    pixels = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    graph = forward_graph(model, (1, size, size))
    for conv in graph.maps("conv"):
        c, h, w = graph.by_name[conv].shape
        for channel in (0, c - 1):
            for row in range(h):
                for col in range(w):
                    a = arithmetic(model, [0.1], [0.3], pixels, conv, channel, row, col)
                    assert a.value == pytest.approx(a.forward, abs=1e-4), (conv, channel, row, col)
                    for then in a.then:
                        assert then.value is not None, then.name
                        assert then.value == pytest.approx(then.forward, abs=1e-4), (then.name, row, col)
        assert [s.kind for s in chain_after(graph, graph.by_name[conv])], conv


def test_a_relu_tile_is_its_convs_channel() -> None:
    graph = forward_graph(Functional(), (1, 16, 16))
    assert source_conv(graph, "relu").name == "conv1"
    assert source_conv(graph, "max_pool2d").name == "conv1"
    assert source_conv(graph, "avg_pool2d").name == "conv2"
    assert source_conv(graph, "fc") is None
    assert [s.name for s in chain_after(graph, graph.by_name["conv2"])] == ["bn", "relu_1", "avg_pool2d"]


def test_a_training_model_is_left_as_it_was() -> None:
    """A model in train mode: the card works in eval mode (BatchNorm's running statistics, as the forward pass it
    is compared with), and leaves the modes, the statistics and forward as they were."""
    model = _randomised(Functional()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    a = arithmetic(model, [0.0], [1.0], pixels, "conv2", 4, 1, 2)
    assert [t.value == pytest.approx(t.forward, abs=1e-4) for t in a.then] == [True, True, True]
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "forward" not in vars(model)


class Odd(nn.Module):
    """What the card cannot work out from one value, or from its usual window: it says so and shows the forward
    pass's number (GroupNorm reads the whole map; an average that does not count its padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.gn = nn.GroupNorm(1, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)  # ResNet's: padded, overlapping windows; 7 x 7 -> 4 x 4
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.avg = nn.AvgPool2d(2, padding=1, count_include_pad=False)  # 4 x 4 -> 3 x 3
        self.fc = nn.Linear(2 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.gn(self.conv(x))))
        return self.fc(self.avg(F.relu(self.conv2(x))).flatten(1))


def test_what_the_card_cannot_work_out_it_says() -> None:
    import json

    from vizkit.card import as_json

    model = _randomised(Odd())
    pixels = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(3))
    a = arithmetic(model, [0.0], [1.0], pixels, "conv", 1, 0, 0)
    gn, relu, pool = a.then
    assert gn.value is None and relu.value == pytest.approx(relu.forward, abs=1e-5)
    assert (pool.row, pool.col) == (0, 0) and pool.window[0] == [None, None, None]  # row -1: padding
    assert pool.value == pytest.approx(pool.forward, abs=1e-5)
    json.dumps(as_json(a), allow_nan=False)  # no -inf from the padding in what the page is sent
    b = arithmetic(model, [0.0], [1.0], pixels, "conv2", 0, 3, 3)
    assert b.then[-1].name == "avg" and b.then[-1].value is None  # count_include_pad=False: the forward's alone
    # a 2 x 2 pool over a 7 x 7 map leaves the last row and column out: the chain stops there and says so
    dropping = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9, 2)).eval()
    c = arithmetic(dropping, [0.0], [1.0], pixels, "0", 0, 6, 0)
    assert c.then == [] and c.note == "1 (MaxPool2d) leaves unit (6, 0) out: none of its windows covers it"
    assert [t.row for t in arithmetic(dropping, [0.0], [1.0], pixels, "0", 0, 5, 5).then] == [2]
