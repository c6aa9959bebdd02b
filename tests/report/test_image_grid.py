"""strata.report.grid: grid layout, per-sample PNGs, and loading an image at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from strata.errors import StrataError
from strata.report.grid import load_image, make_grid, save_grid, save_images


def test_grid_layout_and_pixel_values(tmp_path):
    imgs = torch.zeros(5, 1, 4, 6)
    imgs[3] = 1.0  # row 1, column 0 of a 3-wide grid
    grid = make_grid(imgs, nrow=3, padding=1, pad_value=0.5)
    assert grid.shape == (1, 2 * 5 + 1, 3 * 7 + 1)
    assert grid[0, 6:10, 1:7].eq(1).all() and grid[0, 1:5, 1:7].eq(0).all()
    p = save_grid(imgs, tmp_path / "sub" / "g.png", nrow=3, padding=1)
    arr = np.asarray(Image.open(p))
    assert arr.shape == (11, 22) and arr[6, 1] == 255 and arr[1, 1] == 0


def test_rgb_and_clipping(tmp_path):
    imgs = torch.full((2, 3, 8, 8), 2.0)  # out of range: clipped to 1
    p = save_grid(imgs, tmp_path / "rgb.png")
    im = Image.open(p)
    assert im.mode == "RGB" and np.asarray(im)[2, 2].tolist() == [255, 255, 255]


def test_save_images_round_trip(tmp_path):
    imgs = torch.rand(3, 1, 28, 28)
    paths = save_images(imgs, tmp_path / "each", start=10)
    assert [p.name for p in paths] == ["sample_000010.png", "sample_000011.png", "sample_000012.png"]
    back = load_image(paths[1], 1, (28, 28))
    assert back.shape == (1, 28, 28)
    assert (back - imgs[1]).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_inputs():
    with pytest.raises(StrataError, match="C = 1 or 3"):
        make_grid(torch.rand(2, 2, 4, 4))
    with pytest.raises(StrataError, match="does not exist"):
        load_image("/nonexistent.png", 1, (28, 28))


def test_wrong_size_is_refused(tmp_path):
    Image.fromarray(np.zeros((32, 30), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(StrataError, match="30x32 pixels; this model takes 28x28"):
        load_image(tmp_path / "x.png", 1, (28, 28))
