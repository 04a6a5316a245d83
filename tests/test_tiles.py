import numpy as np
import pytest
import torch

from vizkit.tiles import COLUMNS, GAP, HEADER, LABEL, MIN_TILE, layer_image, tile_scale, viridis


def test_small_maps_are_enlarged_to_at_least_28_px():
    assert [tile_scale(s, s) for s in (1, 4, 7, 14, 27, 28, 64)] == [28, 7, 4, 2, 2, 1, 1]


def test_each_channel_is_a_tile_on_the_layers_one_scale():
    act = torch.zeros(10, 7, 7)  # channel k is k everywhere: the scale runs 0 (channel 0) to 9 (channel 9)
    act += torch.arange(10.0).view(10, 1, 1)
    picture = layer_image(act, "conv3")
    rows, cols = 2, COLUMNS
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] == HEADER + rows * (MIN_TILE + LABEL + GAP) + GAP
    lut = viridis()
    for k in range(10):  # a tile's centre has the viridis colour of its value on the shared scale
        x = GAP + (k % cols) * (MIN_TILE + GAP) + MIN_TILE // 2
        y = HEADER + (k // cols) * (MIN_TILE + LABEL + GAP) + LABEL + MIN_TILE // 2
        assert picture[y, x].tolist() == lut[round(k / 9 * 255)].tolist(), k
    # the whole 28 x 28 tile is the one value (nearest-neighbour enlargement, no blur)
    y0, x0 = HEADER + LABEL, GAP
    assert (picture[y0 : y0 + MIN_TILE, x0 : x0 + MIN_TILE] == lut[0]).all()


def test_a_flat_layer_and_a_bad_shape():
    assert layer_image(torch.ones(1, 28, 28), "flat").shape[2] == 3  # no division by a zero range
    with pytest.raises(ValueError, match="C, H, W"):
        layer_image(torch.ones(2, 3, 4, 4), "batch")
