"""Regression on a real table (scikit-learn's bundled diabetes data, written out as a CSV, read by
the csv data set): the trained model explains a good share of held-out variance, predictions come
back in the target's units, and a class/number mismatch between data and task is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata.api import train
from strata.errors import StrataError
from strata.evaluate import evaluate_run, predict_run


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)  # 442 patients, 10 baseline variables, disease progression after one year
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    rows = [",".join(d.feature_names + ["progression"])]
    rows += [",".join(f"{v:.6g}" for v in (*x, y)) for x, y in zip(d.data, d.target)]
    path.write_text("\n".join(rows) + "\n")
    return path


def config(path, **task):
    return {"name": "diabetes", "data": {"name": "csv", "path": str(path), "target": "progression",
                                         "batch_size": 32, "val_fraction": 0.15},
            "model": {"name": "mlp", "hidden": [32]}, "task": {"name": "regress", **task},
            "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
            "trainer": {"max_epochs": 40, "progress": "off", "monitor": "val/loss", "mode": "min", "seed": 0}}


@pytest.fixture(scope="module")
def diabetes_run(diabetes_csv, tmp_path_factory):
    torch.set_num_threads(1)
    return train(config(diabetes_csv), run_dir=tmp_path_factory.mktemp("runs") / "diabetes")


def test_regression_explains_held_out_variance_in_the_targets_units(diabetes_run):
    s = diabetes_run.summary
    # Least squares on these ten variables reaches R^2 ~0.45 on held-out patients; the mean predictor 0.
    assert s["test/r2"] > 0.35, s
    # rmse is in the target's units (progression ranges 25-346, std ~77), not standardised ones.
    assert 40 < s["test/rmse"] < 65, s
    assert s["test/rmse"] == pytest.approx(np.sqrt(s["test/mse"]), rel=1e-4)
    assert s["test/mae"] < s["test/rmse"]
    again = evaluate_run(diabetes_run.run_dir)
    assert again["test/r2"] == pytest.approx(s["test/r2"], abs=1e-6)


def test_predictions_are_in_units_and_the_target_statistics_travel_with_the_run(diabetes_run, diabetes_csv):
    info = diabetes_run.task.info
    assert 140 < info["target_mean"][0] < 165 and 70 < info["target_std"][0] < 85
    rows = diabetes_csv.read_text().splitlines()
    header = rows[0].split(",")
    inline = [",".join(f"{k}={v}" for k, v in zip(header[:-1], row.split(",")[:-1])) for row in rows[1:21]]
    preds = [p["prediction"] for p in predict_run(diabetes_run.run_dir, inline)]
    truth = [float(row.split(",")[-1]) for row in rows[1:21]]
    assert 25 < min(preds) and max(preds) < 350
    assert np.corrcoef(preds, truth)[0, 1] > 0.5  # (training rows among them; a sanity check of units)


def test_untrained_model_scores_far_worse(diabetes_csv, tmp_path):
    torch.set_num_threads(1)
    cfg = config(diabetes_csv)
    cfg["trainer"]["max_epochs"] = 1
    cfg["optimizer"]["lr"] = 1e-6  # as good as untrained
    s = train(cfg, run_dir=tmp_path / "untrained").summary
    assert s["test/r2"] < 0.1, s


def test_class_and_number_mismatch_is_a_clear_error(diabetes_csv, tmp_path):
    cfg = config(diabetes_csv)
    cfg["task"] = {"name": "classify"}
    with pytest.raises(StrataError, match='regression target.*name = "regress"'):
        train(cfg, run_dir=tmp_path / "a")
    cls = config(diabetes_csv)
    cls["data"]["target"] = "sex"  # coded 1 / 2: read as classes
    with pytest.raises(StrataError, match='class labels.*name = "classify"'):
        train(cls, run_dir=tmp_path / "b")
