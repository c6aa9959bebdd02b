"""MNIST / Fashion-MNIST through the mirror, the IDX reader's errors, and image inputs for predict."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from strata.config import DataConfig
from strata.data import DATASETS, load_data
from strata.data.idx import read_idx, read_idx_cached
from strata.data.images import encode_image_files
from strata.errors import DataError


def manifest(mirror: str, name: str) -> dict:
    if not Path(mirror, "MANIFEST.json").is_file():
        pytest.skip(f"no data mirror: {mirror}/MANIFEST.json, which holds the expected counts, is not a local file")
    return next(d for d in json.loads(Path(mirror, "MANIFEST.json").read_text())["datasets"] if d["name"] == name)


def counts(t: torch.Tensor) -> dict[str, int]:
    return {str(k): int(v) for k, v in enumerate(torch.bincount(t, minlength=10))}


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    data = gzip.compress(head + arr.tobytes())
    path.write_bytes(data)
    return data


# --- real data ----------------------------------------------------------------------------------


def test_mnist_splits_match_the_manifest(mirror):
    m = manifest(mirror, "MNIST")["counts"]
    b = load_data(DataConfig(name="mnist", val_fraction=0.1, split_seed=0))
    assert b.train.tensors["x"].shape == (54000, 1, 28, 28) and b.train.tensors["x"].dtype == torch.float32
    assert len(b.val) == 6000 and len(b.test) == m["test"] == 10000
    assert counts(torch.cat([b.train.tensors["y"], b.val.tensors["y"]])) == m["train_label_counts"]
    assert counts(b.test.tensors["y"]) == m["test_label_counts"]
    x = b.train.tensors["x"]
    assert x.min() == 0 and x.max() == 1 and 0.1 < x.mean() < 0.16  # light strokes on a dark ground
    assert b.info == {**b.info, "in_shape": [1, 28, 28], "in_channels": 1, "num_classes": 10, "image_size": 28,
                      "kind": "image", "class_names": [str(i) for i in range(10)], "background": "dark"}
    json.dumps(b.info)
    # val is stratified and never part of train: no training image appears in val
    vc = torch.bincount(b.val.tensors["y"])
    assert ((vc.float() / 6000 - torch.tensor([int(v) for v in m["train_label_counts"].values()]) / 60000).abs() < 0.002).all()
    seen = {r.numpy().tobytes() for r in b.train.tensors["x"]}
    assert not any(r.numpy().tobytes() in seen for r in b.val.tensors["x"][:500])


def test_mnist_limit_and_seed(mirror):
    a = load_data(DataConfig(name="mnist", limit=1000, split_seed=3))
    b = load_data(DataConfig(name="mnist", limit=1000, split_seed=3))
    c = load_data(DataConfig(name="mnist", limit=1000, split_seed=4))
    assert len(a.train) == 1000 and len(a.val) == 6000
    assert torch.equal(a.train.tensors["x"], b.train.tensors["x"]) and torch.equal(a.val.tensors["y"], b.val.tensors["y"])
    assert not torch.equal(a.val.tensors["y"], c.val.tensors["y"])
    assert torch.bincount(a.train.tensors["y"]).min() >= 85  # stratified: about 100 per digit


def test_labels_per_class_keeps_exactly_that_many_of_every_digit(mirror):
    full = load_data(DataConfig(name="mnist"))
    a = load_data(DataConfig(name="mnist", labels_per_class=10, val_fraction=0.0))
    b = load_data(DataConfig(name="mnist", labels_per_class=10, val_fraction=0.0, split_seed=1))
    assert torch.bincount(a.train.tensors["y"], minlength=10).tolist() == [10] * 10
    assert not torch.equal(a.train.tensors["x"], b.train.tensors["x"])  # split_seed picks them
    c = load_data(DataConfig(name="mnist", labels_per_class=50))  # never drawn from the val split
    seen = {r.numpy().tobytes() for r in full.val.tensors["x"]}
    assert not any(r.numpy().tobytes() in seen for r in c.train.tensors["x"])
    with pytest.raises(DataError, match="class 5 has only .* lower it"):
        load_data(DataConfig(name="mnist", labels_per_class=6000))
    with pytest.raises(DataError, match="needs a data set with class labels"):
        load_data(DataConfig(name="shakespeare", labels_per_class=10))


def test_fashion_mnist(mirror):
    m = manifest(mirror, "Fashion-MNIST")["counts"]
    b = load_data(DataConfig(name="fashion_mnist", limit=600, options={"normalize": True}))
    assert b.info["class_names"] == m["class_names"]
    assert torch.bincount(b.test.tensors["y"]).tolist() == [1000] * 10
    assert torch.bincount(b.train.tensors["y"]).tolist() == [60] * 10
    stats = b.info["normalize"]
    assert 0.2 < stats["mean"][0] < 0.4 and abs(float(b.train.tensors["x"].mean())) < 1e-3


def test_predict_inputs_match_training_images(mirror, tmp_path, capsys):
    b = load_data(DataConfig(name="mnist", limit=10))
    x = b.test.tensors["x"][:2]  # (2, 1, 28, 28)
    pixels = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels[0]).save(tmp_path / "same.png")
    # as a user would draw it: dark ink on white paper, in colour, bigger
    Image.fromarray(255 - pixels[1]).convert("RGB").resize((84, 84), Image.NEAREST).save(tmp_path / "big.jpg", quality=95)
    out = DATASETS.get("mnist").encode_inputs([str(tmp_path / "same.png"), str(tmp_path / "big.jpg")], b.info, tmp_path)
    assert out["x"].shape == (2, 1, 28, 28)
    assert torch.allclose(out["x"][0], x[0], atol=1 / 255 + 1e-6)
    assert (out["x"][1] - x[1]).abs().mean() < 0.06  # resized, grayscale, inverted back to light-on-dark
    err = capsys.readouterr().err
    assert "resized" in err and "84x84" in err and "inverted" in err


# --- no mirror needed ---------------------------------------------------------------------------


def test_image_input_errors_name_the_file(tmp_path):
    info = {"in_shape": [1, 28, 28], "background": "dark"}
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        encode_image_files([str(tmp_path / "notes.txt")], info)
    with pytest.raises(DataError, match="missing.png does not exist"):
        encode_image_files([str(tmp_path / "missing.png")], info)


def test_rgb_input_for_an_rgb_model_with_normalisation(tmp_path):
    info = {"in_shape": [3, 8, 8], "background": None, "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    Image.new("RGBA", (16, 8), (255, 0, 0, 255)).save(tmp_path / "red.png")
    x = encode_image_files([str(tmp_path / "white.png"), str(tmp_path / "red.png")], info, say=lambda m: None)["x"]
    assert x.shape == (2, 3, 8, 8)
    assert torch.allclose(x[0], torch.ones(3, 8, 8)) and torch.allclose(x[1, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_idx_roundtrip_and_npy_cache(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz", ndim=3), arr)
    assert np.array_equal(read_idx_cached(tmp_path / "a.gz"), arr)
    assert (tmp_path / "a.gz.npy").is_file()
    assert np.array_equal(read_idx_cached(tmp_path / "a.gz"), arr)
    ints = np.arange(6, dtype=">i4")
    write_idx(tmp_path / "b.gz", ints, code=0x0C)
    assert read_idx(tmp_path / "b.gz").tolist() == list(range(6))


def test_truncated_gz_is_a_clear_error(tmp_path):
    data = write_idx(tmp_path / "full.gz", np.zeros((100, 28, 28), np.uint8))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.gz is truncated or corrupt: .*delete it"):
        read_idx(tmp_path / "cut.gz")
    # a complete gzip stream whose IDX body is short
    head = bytes([0, 0, 8, 3]) + np.array([100, 28, 28], ">u4").tobytes()
    (tmp_path / "short.gz").write_bytes(gzip.compress(head + bytes(28 * 28)))
    with pytest.raises(DataError, match="short.gz is truncated or corrupt: 784 data bytes for dims"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text.gz")
    with pytest.raises(DataError, match="expected 1 dimensions"):
        read_idx(tmp_path / "full.gz", ndim=1)
