"""probe(): a model's every layer for one input, on a tiny model whose numbers are worked out by hand."""

from collections import OrderedDict

import pytest
import torch
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
    assert [(layer.name, layer.kind, layer.stage) for layer in result.layers] == [
        ("block.conv", "Conv2d", "before activation"),
        ("block.relu", "ReLU", "after activation"),  # dropout and flatten show nothing new: left out
        ("fc", "Linear", "before activation"),
    ]
    conv, relu, fc = result.layers
    assert conv.values.tolist() == [[[-1.0, -0.5], [0.0, 1.0]]]
    assert relu.values.tolist() == [[[0.0, 0.0], [0.0, 1.0]]] and relu.blocks == ["block"]
    assert fc.values.tolist() == [0.0, 1.0] and fc.logits and not relu.logits
    e = torch.e
    assert result.probs.tolist() == pytest.approx([1 / (1 + e), e / (1 + e)])
    assert result.prediction == 1 and result.target == 1 and result.cam_layer == "block.conv"
    # Grad-CAM for class 1 on conv: d logit1 / d conv = [[0, 0], [0, 2]] (only where the ReLU passes);
    # the channel weight is its mean 0.5, times the map, ReLU: [[0, 0], [0, 0.5]], scaled to max 1
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
    assert [layer.name for layer in result.layers] == ["1", "2", "3"] and result.layers[-1].logits


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
    assert names == ["conv", "relu (call 1)", "pool (call 1)", "relu (call 2)", "pool (call 2)", "fc"]
    conv = result.layers[0].values
    assert conv.min() == -0.5 and conv.max() == 0.5  # before the in-place ReLU rewrote it
    assert result.layers[2].values.tolist() == [[[0.0, 0.5], [0.0, 0.5]]]
    assert result.layers[4].values.tolist() == [[[0.5]]]


def test_grad_cam_that_cannot_be_computed_leaves_the_rest():
    model = Tiny()
    model.block.conv.requires_grad_(False)  # frozen, and the input needs no gradient: nothing flows back
    result = probe(model, [0.0], [1.0], torch.rand(1, 1, 2, 2))
    assert result.cam is None and "no Grad-CAM on block.conv" in result.cam_error
    assert len(result.layers) == 3 and result.probs.sum().item() == pytest.approx(1.0)
