import pytest
import torch

from vizkit.errors import VizkitError
from vizkit.hooks import capture
from vizkit.models import get_model


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_returns_detached_cpu_outputs():
    model = get_model("vizkit")
    with torch.enable_grad(), capture(model, ["conv1", "fc2"]) as out:
        model(torch.rand(3, 1, 28, 28))
    assert out["conv1"].shape == (3, 16, 28, 28)
    assert out["fc2"].shape == (3, 10)
    assert not out["conv1"].requires_grad and out["conv1"].device.type == "cpu"
    assert hook_count(model) == 0


def test_hooks_removed_and_mode_restored_after_an_exception():
    model = get_model("vizkit")
    model.train()
    with pytest.raises(RuntimeError), capture(model, ["conv1", "conv2"]):
        assert not model.training
        model(torch.rand(2, 3, 28, 28))  # wrong channel count: conv1 raises
    assert hook_count(model) == 0
    assert model.training


def test_eval_mode_is_restored_too():
    """Each module leaves the block in the mode it entered it, whatever happened inside: a model in eval mode
    that the block put in train mode comes back in eval mode; a training model with one BatchNorm frozen on
    purpose comes back with that one BatchNorm, and only it, in eval mode (model.train() would unfreeze it)."""
    model = get_model("vizkit").eval()
    with capture(model, ["conv1"], eval_mode=False):
        assert not model.training  # eval_mode=False: left as it was on the way in
        model.train()
    assert [m.training for m in model.modules()] == [False] * len(list(model.modules()))
    model.train()
    model.bn2.eval()
    with capture(model, ["conv1"]):
        assert not any(m.training for m in model.modules())
    assert [name for name, m in model.named_modules() if not m.training] == ["bn2"]


def test_unknown_layer_lists_valid_names():
    model = get_model("net")
    with pytest.raises(VizkitError, match="no layer named 'conv9'.*conv1, pool1"):
        with capture(model, ["conv9"]):
            pass
    assert hook_count(model) == 0
