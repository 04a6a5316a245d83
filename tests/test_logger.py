import torch

from vizkit.logger import RunLogger, image_epochs
from vizkit.plots import feature_grid


def test_image_epochs_fit_tensorboards_default_of_ten():
    assert image_epochs(3) == {1, 2, 3}
    many = image_epochs(50)
    assert len(many) == 10 and {1, 50} <= many


def test_feature_grid_has_a_tile_per_channel():
    grid = feature_grid(torch.randn(4, 16, 7, 7))
    # 16 tiles of 7 px plus 1 px padding across, 4 rows down
    assert grid.shape == (3, 4 * 8 + 1, 16 * 8 + 1)
    assert 0.0 <= grid.min() and grid.max() <= 1.0


def test_hparams_stay_in_the_runs_own_folder(tmp_path):
    with RunLogger(tmp_path, "scalars") as logger:
        logger.hparams({"lr": 0.1, "mean": [0.5]}, {"test_accuracy": 0.9})
    logger.close()  # a second close is harmless
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_off_writes_nothing(tmp_path):
    with RunLogger(tmp_path, "off") as logger:
        logger.scalars({"loss/train": 1.0}, 1)
    assert list(tmp_path.iterdir()) == []
