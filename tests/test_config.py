import dataclasses

import pytest

from vizkit.config import RECIPES_DIR as EXPERIMENTS
from vizkit.config import TrainConfig, from_dict, load_config, parse_assignment, to_toml
from vizkit.errors import VizkitError


def test_default_toml_is_the_dataclass_default():
    assert load_config(str(EXPERIMENTS / "default.toml")) == TrainConfig()


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_recipe_builds_its_model_for_its_dataset(path):
    """A misspelt model or dataset in a recipe fails here: the model is built for the dataset's shape and
    maps a batch of its inputs to one logit per class."""
    import torch

    from vizkit.data import get_spec
    from vizkit.models import get_model

    cfg = load_config(path.stem)  # by name, as a person types it
    spec = get_spec(cfg.dataset)
    model = get_model(cfg.model, spec.channels, spec.size, len(spec.classes), cfg.model_args).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, spec.channels, spec.size, spec.size)).shape == (3, len(spec.classes))


def test_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("001-net").model == "net"
    with pytest.raises(VizkitError, match="recipes: 000-cnn-tensorboard, 001-net"):
        load_config("no-such-recipe")


def test_recipes_cover_every_tutorial():
    stems = {p.stem.split("-")[0] for p in EXPERIMENTS.glob("*.toml")}
    assert {"000", "001", "002", "003", "004", "default"} <= stems


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('model = "net"\nlearning_rate = 0.1\n')
    with pytest.raises(VizkitError, match="unknown key 'learning_rate'"):
        load_config(str(f))


def test_syntax_error_gives_the_line(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('model = "net"\nepochs = = 3\n')
    with pytest.raises(VizkitError, match="line 2"):
        load_config(str(f))


def test_missing_file_lists_recipes(tmp_path):
    recipes = "000-cnn-tensorboard, 001-net, 002-cnnnet-cifar10, 002-lenet-cifar10, 002-mlp, 003-keras-cnn, 004-cnn, "
    recipes += "default, fast"  # every file in vizkit/recipes, sorted
    for name in ("no-such-recipe", "01-net", str(tmp_path / "001-net.toml")):  # a typo, a path that is not there
        with pytest.raises(VizkitError) as raised:
            load_config(name)
        assert str(raised.value) == f"config file '{name}' not found; recipes: {recipes}"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -0.1}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"epochs": "3"}, "must be int"),
        ({"mean": [0.5], "std": []}, "same length"),
        ({"val_size": 0}, "'val_size' must be at least 1"),
        ({"betas": [0.9]}, "'betas' must be two numbers in \\[0, 1\\)"),
        ({"betas": [0.9, 1.0]}, "'betas' must be two numbers"),
    ],
)
def test_bad_values(values, message):
    with pytest.raises(VizkitError, match=message):
        from_dict(values)


def test_toml_round_trip(tmp_path):
    cfg = dataclasses.replace(TrainConfig(), mean=[0.5], std=[0.25], run_dir='runs/a "quoted" dir', augment=True)
    f = tmp_path / "c.toml"
    f.write_text(to_toml(cfg))
    assert load_config(str(f)) == cfg


def test_set_parses_toml_values():
    assert parse_assignment("lr=0.1") == ("lr", 0.1)
    assert parse_assignment("mean=[0.5]") == ("mean", [0.5])
    assert parse_assignment("augment=true") == ("augment", True)
    assert parse_assignment("model=net") == ("model", "net")
    assert parse_assignment("log-every=7") == ("log_every", 7)
