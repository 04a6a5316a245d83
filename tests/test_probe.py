"""probe(): a model's every step for one input, on tiny models whose numbers are worked out by hand."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vizkit.probe import probe


class Tiny(nn.Module):
    """conv (1x1, weight 2, bias -1) in a block with a ReLU, dropout, flatten, then fc (4 -> 2) = the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1), relu=nn.ReLU()))
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.block.conv.weight.fill_(2.0)
            self.block.conv.bias.fill_(-1.0)
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.drop(self.block(x))))


def test_every_layer_in_order_with_known_values():
    model = Tiny().train()  # in train mode, as a training loop may leave it: dropout must not run
    pixels = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]])
    result = probe(model, [0.0], [1.0], pixels)
    # conv: 2x - 1 = [[-1, -0.5], [0, 1]]; relu: [[0, 0], [0, 1]]; fc: [0, 1]
    assert [(layer.name, layer.kind, layer.op, layer.inputs) for layer in result.layers] == [
        ("block.conv", "conv", "Conv2d", ["input"]),
        ("block.relu", "activation", "ReLU", ["block.conv"]),  # dropout and flatten show nothing new: left out
        ("fc", "linear", "Linear", ["flat"]),
    ]
    conv, relu, fc = result.layers
    assert conv.values.tolist() == [[[-1.0, -0.5], [0.0, 1.0]]]
    assert relu.values.tolist() == [[[0.0, 0.0], [0.0, 1.0]]] and relu.blocks == ["block"]
    assert fc.values.tolist() == [0.0, 1.0] and fc.output == "logits" and relu.output is None
    e = torch.e
    assert result.probs.tolist() == pytest.approx([1 / (1 + e), e / (1 + e)])
    # Grad-CAM on the last conv's activation (Selvaraju et al.'s rectified maps), the ReLU after block.conv
    assert result.prediction == 1 and result.target == 1 and result.cam_layer == "block.relu"
    # for class 1: d logit1 / d relu = fc's row [[0, 0], [0, 1]]; the channel weight is its mean 0.25, times
    # the map [[0, 0], [0, 1]], ReLU: [[0, 0], [0, 0.25]], scaled to max 1
    assert result.cam.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_the_model_is_left_as_found():
    model = Tiny().train()
    model.block.eval()  # a block frozen on purpose stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe(model, [0.5], [0.5], torch.rand(1, 1, 2, 2), target=0)
    assert model.training and not model.block.training and not model.block.conv.training and model.fc.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_a_chosen_class_and_a_model_without_conv():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    result = probe(mlp, [0.0], [1.0], torch.rand(1, 1, 2, 2), target=0)
    assert result.target == 0 and result.cam is None and result.cam_layer is None
    assert [layer.name for layer in result.layers] == ["1", "2", "3"] and result.layers[-1].output == "logits"


class Reused(nn.Module):
    """One in-place ReLU and one pool, each used twice (as tutorial 001 uses `self.pool`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv(x)))
        return self.fc(self.pool(self.relu(x)).flatten(1))


def test_in_place_activations_and_layers_called_twice():
    pixels = torch.tensor([[[[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]])
    result = probe(Reused(), [0.0], [1.0], pixels)
    names = [layer.name for layer in result.layers]
    assert names == ["conv", "relu", "pool", "relu_1", "pool_1", "fc"]  # a second call gets fx's name
    conv = result.layers[0].values
    assert conv.min() == -0.5 and conv.max() == 0.5  # before the in-place ReLU rewrote it
    assert result.layers[2].values.tolist() == [[[0.0, 0.5], [0.0, 0.5]]]
    assert result.layers[4].values.tolist() == [[[0.5]]]


def test_grad_cam_that_cannot_be_computed_leaves_the_rest():
    model = Tiny()
    model.block.conv.requires_grad_(False)  # frozen, and the input needs no gradient: nothing flows back
    result = probe(model, [0.0], [1.0], torch.rand(1, 1, 2, 2))
    assert result.cam is None and "no Grad-CAM on block.relu" in result.cam_error
    assert len(result.layers) == 3 and result.probs.sum().item() == pytest.approx(1.0)


class Functional(nn.Module):
    """pytorch/examples' style: functional ReLU and pooling, a residual addition, log_softmax, a tuple out.

    conv: 1x1, weight 1, bias -0.5; relu; block (1x1, weight 2, bias 0); add = relu + block(relu); pool 2;
    fc (1 -> 2: weight [1, -1], bias 0); log_softmax; returns (log-probabilities, the pooled map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.block = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-0.5)
            self.block.weight.fill_(2.0)
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv(x))
        x = x + self.block(x)
        pooled = F.max_pool2d(x, 2)
        return F.log_softmax(self.fc(torch.flatten(pooled, 1)), dim=1), pooled


def test_functional_steps_additions_and_a_log_softmax_tuple_output():
    model = Functional()
    pixels = torch.tensor([[[[0.0, 0.25], [0.75, 1.0]]]])
    result = probe(model, [0.0], [1.0], pixels, classes=["yes", "no"])
    steps = {layer.name: layer for layer in result.layers}
    assert list(steps) == ["conv", "relu", "block", "add", "max_pool2d", "fc", "log_softmax"]
    assert [(steps[n].kind, steps[n].op) for n in ("relu", "add", "max_pool2d", "log_softmax")] == [
        ("activation", "F.relu"), ("add", "+"), ("pool", "F.max_pool2d"), ("softmax", "F.log_softmax")
    ]  # fmt: skip
    conv = steps["conv"].values
    assert conv.tolist() == [[[-0.5, -0.25], [0.25, 0.5]]]
    assert torch.equal(steps["relu"].values, conv.clamp_min(0))  # F.relu's map is the clamp of the one before
    assert steps["add"].inputs == ["relu", "block"]
    assert torch.equal(steps["add"].values, steps["relu"].values + steps["block"].values)  # the sum, exactly
    assert steps["add"].values.tolist() == [[[0.0, 0.0], [0.75, 1.5]]]
    assert steps["max_pool2d"].values.tolist() == [[[1.5]]]
    # fc: [1.5, -1.5]; the output is log-probabilities (not logits), and their exp is the probability
    assert steps["log_softmax"].output == "log-probabilities" and steps["fc"].output is None
    p = 1 / (1 + torch.e**-3.0)
    assert result.probs.tolist() == pytest.approx([p, 1 - p])
    # Grad-CAM's default: the last conv step is `block`, and no activation follows its addition: the conv itself
    assert result.cam_layer == "block"


def test_a_grad_cam_with_no_evidence_says_so():
    model = Functional()
    # class "no" (1): d out1 / d pooled = -1 everywhere it is used; the block's map is positive, so the
    # weighted map is negative everywhere and the ReLU leaves nothing
    result = probe(model, [0.0], [1.0], torch.tensor([[[[0.0, 0.25], [0.75, 1.0]]]]), target=1, classes=["yes", "no"])
    assert result.cam is None and result.cam_error == "no positive evidence for class no in block"
