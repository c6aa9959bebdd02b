"""CSV tables (numeric + categorical) and .npz arrays."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from strata.config import DataConfig
from strata.data import DATASETS, load_data
from strata.errors import ConfigError, DataError


@pytest.fixture
def table(tmp_path):
    """200 rows: y = 'high' when 2*age + (job == 'admin') * 30 > 100; one missing age, one missing job."""
    rng = np.random.default_rng(0)
    lines = ["id,age,income,job,label"]
    for i in range(200):
        age = int(rng.integers(18, 70))
        job = ["admin", "tech", "retired"][i % 3]
        label = "high" if 2 * age + 30 * (job == "admin") > 100 else "low"
        lines.append(f"{i},{'' if i == 5 else age},{rng.normal(5e4, 1e4):.0f},{'NA' if i == 7 else job},{label}")
    path = tmp_path / "people.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_cfg(path, **kw):
    return DataConfig(name="csv", val_fraction=0.1, options={"path": str(path), "target": "label", "drop": ["id"], **kw})


def test_csv_onehot_and_standardised(table):
    b = load_data(csv_cfg(table))
    info = b.info
    assert info["class_names"] == ["high", "low"] and info["num_classes"] == 2
    assert [c["name"] for c in info["numeric"]] == ["age", "income"]
    assert info["categorical"] == [{"name": "job", "values": ["admin", "retired", "tech"]}]
    assert info["in_features"] == 2 + 4 and b.train.tensors["x"].shape[1] == 6
    assert (len(b.train), len(b.val), len(b.test)) == (144, 16, 40)
    x = b.train.tensors["x"]
    assert x[:, :2].mean(0).abs().max() < 0.05 and ((x[:, :2].std(0) - 1).abs() < 0.05).all()  # train stats
    assert torch.equal(x[:, 2:].sum(1), torch.ones(len(x)))  # exactly one category each (incl. <other>)
    # a logistic regression on these features beats the majority class on the test split
    w = torch.zeros(6, 2, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, b.train.tensors["y"])
        loss.backward()
        return loss

    opt.step(closure)
    yt = b.test.tensors["y"]
    acc = ((b.test.tensors["x"] @ w).argmax(1) == yt).float().mean()
    assert acc > max(yt.float().mean(), 1 - yt.float().mean()) + 0.1


def test_csv_index_encoding_and_predict_rows(table, tmp_path):
    b = load_data(csv_cfg(table, encoding="index", categorical=["job"]))
    assert b.train.tensors["x"].shape[1] == 2 and b.train.tensors["cat"].dtype == torch.int64
    assert b.info["cat_cardinalities"] == [4]
    new = tmp_path / "new.csv"
    new.write_text("age,income,job\n40,50000,tech\n,,astronaut\n")
    spec = DATASETS.get("csv")
    out = spec.encode_inputs([str(new), "age=60,job=admin"], b.info, tmp_path)
    assert out["cat"].tolist() == [[3], [0], [1]]  # unseen 'astronaut' -> 0
    assert out["x"][1].tolist() == [0.0, 0.0]  # missing numbers -> the training mean
    with pytest.raises(DataError, match="not trained on: salary"):
        spec.encode_inputs(["salary=3"], b.info, tmp_path)


def test_csv_regression_target_and_gz(tmp_path):
    rows = ["x1,x2,y"] + [f"{i},{i % 5},{0.5 * i + 0.1}" for i in range(50)]
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
    b = load_data(DataConfig(name="csv", options={"path": str(tmp_path / "t.csv.gz"), "target": "y"}))
    assert b.info["target_kind"] == "regression" and b.train.tensors["y"].dtype == torch.float32
    assert "num_classes" not in b.info and b.info["num_outputs"] == 1


def test_csv_errors(table, tmp_path):
    with pytest.raises(DataError, match="no column 'lable'.*did you mean 'label'"):
        load_data(DataConfig(name="csv", options={"path": str(table), "target": "lable"}))
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(name="csv", options={"path": str(tmp_path / "no.csv"), "target": "y"}))
    with pytest.raises(ConfigError, match="target: missing"):
        load_data(DataConfig(name="csv", options={"path": str(table)}))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="line 3: 1 fields, the header has 2"):
        load_data(DataConfig(name="csv", options={"path": str(tmp_path / "ragged.csv"), "target": "b"}))
    with pytest.raises(DataError, match="'job' holds text but is not in"):
        load_data(csv_cfg(table, categorical=[]))


def test_npz_carved_and_given_splits(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 2, 4, 4)), rng.integers(0, 3, 100)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    b = load_data(DataConfig(name="numpy", val_fraction=0.1, options={"path": str(tmp_path / "a.npz")}))
    assert (len(b.train), len(b.val), len(b.test)) == (72, 8, 20)
    assert b.info["kind"] == "image" and b.info["in_shape"] == [2, 4, 4] and b.info["num_classes"] == 3
    assert b.train.tensors["x"].dtype == torch.float32 and b.train.tensors["y"].dtype == torch.int64
    np.savez(tmp_path / "b.npz", x=x[:, 0, 0], y=y.astype(np.float32), x_test=x[:10, 0, 0], y_test=y[:10] * 1.0)
    b = load_data(DataConfig(name="numpy", val_fraction=0.0, options={"path": str(tmp_path / "b.npz")}))
    assert (len(b.train), b.val, len(b.test)) == (100, None, 10) and b.info["num_outputs"] == 1
    np.save(tmp_path / "one.npy", x[0, 0, 0])
    out = DATASETS.get("numpy").encode_inputs([str(tmp_path / "one.npy")], b.info, tmp_path)
    assert out["x"].shape == (1, 4)
    np.savez(tmp_path / "tiny.npz", x=x[:5], y=y[:5])
    b = load_data(DataConfig(name="numpy", val_fraction=0.05, options={"path": str(tmp_path / "tiny.npz")}))
    assert (len(b.train), b.val, len(b.test)) == (4, None, 1)  # an empty split is None, not zero-length


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no array 'y'"):
        load_data(DataConfig(name="numpy", options={"path": str(tmp_path / "noy.npz")}))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(DataConfig(name="numpy", options={"path": str(tmp_path / "junk.npz")}))
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 2)), y=np.zeros(4, int))
    with pytest.raises(DataError, match="same length"):
        load_data(DataConfig(name="numpy", options={"path": str(tmp_path / "len.npz")}))
