"""scikit-learn digits (offline) and the image-folder data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from strata.config import DataConfig
from strata.build import build_config
from strata.data import load_data
from strata.errors import ConfigError, DataError


def rows(split) -> set[bytes]:
    return {r.numpy().tobytes() for r in split.tensors["x"]}


def test_digits_splits_are_fixed_disjoint_and_stratified():
    b = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=0))
    assert (len(b.train), len(b.val), len(b.test)) == (1213, 135, 449)  # 1797: 25% test, 10% of the rest val
    assert b.train.tensors["x"].shape[1:] == (1, 8, 8) and b.info["in_shape"] == [1, 8, 8]
    assert b.info["num_classes"] == 10 and b.info["background"] == "dark"
    x = torch.cat([b.train.tensors["x"], b.val.tensors["x"], b.test.tensors["x"]])
    assert x.min() == 0 and x.max() == 1
    assert not rows(b.train) & rows(b.test) and not rows(b.val) & rows(b.test)
    assert torch.bincount(b.test.tensors["y"]).min() >= 43  # ~45 per class
    again = load_data(DataConfig(name="digits", val_fraction=0.2, limit=300, split_seed=0))
    assert torch.equal(again.test.tensors["y"], b.test.tensors["y"])  # test does not move with val/limit
    assert len(again.train) == 300 and torch.bincount(again.train.tensors["y"]).min() >= 28
    other = load_data(DataConfig(name="digits", split_seed=1))
    assert not torch.equal(other.test.tensors["x"], b.test.tensors["x"])


def test_digits_labels_fit_the_images():
    """Nearest class centroid from train must beat chance (10%) on test by far: images and labels align."""
    b = load_data(DataConfig(name="digits"))
    xtr, ytr = b.train.tensors["x"].flatten(1), b.train.tensors["y"]
    cent = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    pred = torch.cdist(b.test.tensors["x"].flatten(1), cent).argmin(1)
    assert (pred == b.test.tensors["y"]).float().mean() > 0.85


def test_digits_options_are_validated():
    with pytest.raises(ConfigError, match="unknown key 'normalise'.*did you mean 'normalize'"):
        build_config({"data": {"name": "digits", "normalise": True}, "model": {"name": "mlp"},
                      "task": {"name": "classify"}})


def make_folder(root, per_class=12, size=(20, 16), mode="RGB"):
    rng = np.random.default_rng(0)
    for c, level in (("dark", 30), ("light", 220)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(rng.normal(level, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).convert(mode).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_carves_splits(tmp_path, capsys):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "light" / "README.txt").write_text("ignored")
    b = load_data(DataConfig(name="image_folder", val_fraction=1 / 3, options={"root": str(tmp_path / "imgs"),
                                                                            "image_size": 8, "test_fraction": 0.25}))
    assert b.info["class_names"] == ["dark", "light"] and b.info["in_shape"] == [3, 8, 8]
    assert (len(b.train), len(b.val), len(b.test)) == (12, 6, 6)
    for s in (b.train, b.val, b.test):
        mean = s.tensors["x"].mean((1, 2, 3))
        assert torch.equal(mean > 0.5, s.tensors["y"] == 1)
    assert "resized 12 of 12 images to 8x8" in capsys.readouterr().err


def test_image_folder_given_splits_and_grayscale(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=6)
    make_folder(tmp_path / "d" / "test", per_class=2, mode="L")
    b = load_data(DataConfig(name="image_folder", val_fraction=0.0,
                             options={"root": str(tmp_path / "d"), "image_size": 16, "channels": 1}))
    assert (len(b.train), b.val, len(b.test)) == (12, None, 4)
    assert b.train.tensors["x"].shape == (12, 1, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(name="image_folder", options={"root": str(tmp_path / "nope")}))
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no sub-folders"):
        load_data(DataConfig(name="image_folder", options={"root": str(tmp_path / "flat")}))
    with pytest.raises(ConfigError, match="root: missing"):
        load_data(DataConfig(name="image_folder"))
