import pytest
import torch

from vizkit.errors import VizkitError
from vizkit.graph import forward_graph
from vizkit.models import get_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_model_gives_logits(name, channels, size):
    model = get_model(name, in_channels=channels, image_size=size).eval()
    out = model(torch.rand(5, channels, size, size))
    assert out.shape == (5, 10)
    # logits, not probabilities: no softmax at the end (CrossEntropyLoss applies its own)
    assert not torch.allclose(out.exp().sum(1), torch.ones(5))


def test_registry_has_the_tutorial_models():
    assert {"net", "mlp", "cnn", "keras-cnn", "lenet5", "cnnnet", "lenet", "vizkit"} <= set(list_models())


def test_unknown_model_lists_names():
    with pytest.raises(VizkitError, match="choose one of .*keras-cnn"):
        get_model("resnet9000")


@pytest.mark.parametrize("name", [n for n in list_models() if n != "mlp"])
def test_conv_layers_are_named_for_typing(name):
    model = get_model(name)
    assert forward_graph(model, [1, 28, 28]).names("conv")[:2] == ["conv1", "conv2"]


def test_recipe_001_shape():
    model = get_model("net")
    assert model.fc1.in_features == 320 and model.fc1.out_features == 50


def test_building_leaves_batchnorm_untouched():
    model = get_model("vizkit")
    assert model.bn1.num_batches_tracked.item() == 0 and model.training
