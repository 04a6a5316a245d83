"""graph.py: every step of forward (modules and functional calls), capture of any step, the model left as found."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES_NET
from torch import nn

from vizkit.errors import VizkitError
from vizkit.graph import capture, first_tensor, forward_graph


def examples_net() -> type[nn.Module]:
    """pytorch/examples' mnist Net, as its main.py writes it (experiments/pytorch_examples_net.py)."""
    spec = importlib.util.spec_from_file_location("pytorch_examples_net", EXAMPLES_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net


Examples = examples_net()


class Residual(nn.Module):
    """Residual blocks `F.relu(x + block(x))` in a ModuleList, global pooling, and a tuple out."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)) for _ in range(2))
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)), x


class DataDependent(nn.Module):
    """Control flow on the values: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = F.relu(x)
        return self.fc(x.flatten(1))


def test_every_step_of_pytorch_examples_net():
    graph = forward_graph(Examples(), [1, 28, 28])
    assert graph.traced
    steps = [(s.name, s.kind, s.op, s.inputs, s.shape) for s in graph.steps]
    assert steps == [
        ("conv1", "conv", "Conv2d", ("input",), (32, 26, 26)),
        ("relu", "activation", "F.relu", ("conv1",), (32, 26, 26)),
        ("conv2", "conv", "Conv2d", ("relu",), (64, 24, 24)),
        ("relu_1", "activation", "F.relu", ("conv2",), (64, 24, 24)),
        ("max_pool2d", "pool", "F.max_pool2d", ("relu_1",), (64, 12, 12)),
        ("dropout1", "dropout", "Dropout", ("max_pool2d",), (64, 12, 12)),
        ("flatten", "flatten", "torch.flatten", ("dropout1",), (9216,)),
        ("fc1", "linear", "Linear", ("flatten",), (128,)),
        ("relu_2", "activation", "F.relu", ("fc1",), (128,)),
        ("dropout2", "dropout", "Dropout", ("relu_2",), (128,)),
        ("fc2", "linear", "Linear", ("dropout2",), (10,)),
        ("log_softmax", "softmax", "F.log_softmax", ("fc2",), (10,)),
    ]
    # Grad-CAM's default is the last conv's activation; the output is log-probabilities, not logits
    assert graph.cam_step() == "relu_1" and graph.output == "log_softmax" and graph.output_kind == "log-probabilities"
    assert "dropout1" not in [s.name for s in graph.drawn] and "flatten" not in [s.name for s in graph.drawn]


def test_residual_additions_are_steps_and_containers_name_their_last_step():
    graph = forward_graph(Residual(), [1, 8, 8])
    adds = [s for s in graph.steps if s.kind == "add"]
    assert [(s.name, s.inputs) for s in adds] == [("add", ("relu", "blocks.0.1")), ("add_1", ("relu_1", "blocks.1.1"))]
    assert graph.resolve("blocks.1").name == "blocks.1.1" and graph.by_name["blocks.1.1"].blocks == ("blocks.1",)
    # the last conv, its BatchNorm and the addition lead to the ReLU after it: Grad-CAM's default
    assert graph.cam_step() == "relu_2" and graph.output == "fc" and graph.output_kind == "logits"


def test_captured_steps_equal_what_the_model_computes():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(), capture(model, ["stem", "relu", "blocks.0", "add", "relu_1"], [1, 8, 8]) as out:
        logits, _ = model(x)
        stem = model.stem(x)
        block = model.blocks[0](F.relu(stem))
    assert torch.equal(out["stem"], stem)
    assert torch.equal(out["relu"], stem.clamp_min(0))  # F.relu's output is the clamp of the map before it
    assert torch.equal(out["blocks.0"], block)  # a container's path: its last step, the BatchNorm
    assert torch.equal(out["add"], out["relu"] + out["blocks.0"])  # the addition is the sum, exactly
    assert torch.equal(out["relu_1"], out["add"].clamp_min(0))
    with torch.no_grad():
        assert torch.equal(first_tensor(model(x)), logits)  # the traced run gives the model's own output


def test_the_model_is_left_as_found_even_when_forward_raises():
    model = Residual().train()
    model.blocks[1].eval()  # frozen on purpose: stays so
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError), capture(model, ["add"], [1, 8, 8]):
        model(torch.zeros(1, 3, 8, 8))  # three channels for a one-channel stem: raises inside
    assert "forward" not in vars(model)  # its own forward again: nothing left on the instance
    assert model.training and model.blocks[0].training and not model.blocks[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # and it still runs as itself, in train mode (BatchNorm moves its running statistics)
    model(torch.randn(4, 1, 8, 8))
    assert not torch.equal(before["blocks.0.1.running_mean"], model.blocks[0][1].running_mean)


def test_a_model_that_cannot_be_traced_shows_its_modules_and_says_so_once(caplog):
    model = DataDependent()
    with caplog.at_level(logging.WARNING, logger="vizkit"):
        graph = forward_graph(model, [1, 28, 28])
        forward_graph(model, [1, 28, 28])  # made once: said once
    said = [r.getMessage() for r in caplog.records if "could not be traced" in r.getMessage()]
    assert len(said) == 1 and "DataDependent" in said[0]
    assert not graph.traced and [s.name for s in graph.steps] == ["conv", "fc"]
    with torch.no_grad(), capture(model, ["conv"], [1, 28, 28]) as out:
        model(torch.ones(1, 1, 28, 28))
    assert out["conv"].shape == (1, 2, 26, 26)
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_names_and_outputs_without_a_tensor_are_one_error():
    graph = forward_graph(Examples(), [1, 28, 28])
    with pytest.raises(VizkitError, match="no layer named 'conv9'; layers: conv1, relu, conv2, relu_1"):
        graph.resolve("conv9")
    with pytest.raises(VizkitError, match="returned a dict with no tensor"):
        first_tensor({"a": 1})
    assert first_tensor({"logits": torch.ones(1), "x": torch.zeros(1)}).item() == 1.0


def test_a_forward_that_does_not_fit_the_input_is_one_error_not_a_fallback():
    with pytest.raises(VizkitError, match=r"^Net does not take 3x28x28 inputs"):
        forward_graph(Examples(), [3, 28, 28])


def test_a_replaced_submodule_is_traced_again():
    model = Residual().eval()
    forward_graph(model, [1, 8, 8])
    model.fc = nn.Linear(4, 3)  # a new head, as fine-tuning puts one on
    with torch.no_grad(), capture(model, ["fc"], [1, 8, 8]) as out:
        logits, _ = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3) and torch.equal(out["fc"], logits)


class Tutorial001(torch.nn.Module):
    """Tutorial 001's Net as its text writes it: one pooling and one ReLU module, used for every layer."""

    def __init__(self):
        super(Tutorial001, self).__init__()  # noqa: UP008 (as the tutorial writes it)
        self.conv1 = torch.nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = torch.nn.Conv2d(10, 20, kernel_size=5)
        self.pooling = torch.nn.MaxPool2d(kernel_size=2)
        self.fc1 = torch.nn.Linear(320, 50)
        self.fc2 = torch.nn.Linear(50, 10)
        self.ReLU = torch.nn.ReLU()

    def forward(self, x):
        batch_size = x.size(0)
        x = self.ReLU(self.pooling(self.conv1(x)))
        x = self.ReLU(self.pooling(self.conv2(x)))
        x = x.view(batch_size, -1)
        x = self.ReLU(self.fc1(x))
        x = self.fc2(x)
        return x


def test_tutorial_001_modules_called_again_are_steps_of_their_own():
    graph = forward_graph(Tutorial001(), [1, 28, 28])
    assert graph.names() == ["conv1", "pooling", "ReLU", "conv2", "pooling_1", "ReLU_1", "view", "fc1", "ReLU_2", "fc2"]
    assert graph.resolve("pooling").shape == (10, 12, 12) and graph.resolve("pooling_1").shape == (20, 4, 4)
    # Grad-CAM's default: past conv2's pooling to the ReLU that rectifies it
    assert graph.cam_step() == "ReLU_1" and graph.relus() == ["ReLU", "ReLU_1", "ReLU_2"]


class Talkative(nn.Module):
    """A forward that keeps its input and counts its calls: tracing must leave neither behind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last = x
        return self.conv(x).flatten(1)[:, :10]


def test_tracing_leaves_the_model_s_attributes_as_they_were():
    model = Talkative()
    graph = forward_graph(model, [1, 6, 6])
    assert graph.traced and model.calls == 0 and not hasattr(model, "last")
    with torch.no_grad(), capture(model, ["conv"], [1, 6, 6]) as out:
        model(torch.ones(1, 1, 6, 6))
    assert out["conv"].shape == (1, 2, 4, 4) and "forward" not in vars(model)
    model(torch.ones(1, 1, 6, 6))  # its own forward again
    assert model.calls == 1 and model.last.shape == (1, 1, 6, 6)
