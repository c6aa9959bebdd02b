"""The 'reconstruct' task: AUROC and rates on toy cases, anomalous examples kept out of training, a
short training on real MNIST lowers the reconstruction loss, the threshold chosen on validation
data is saved and used by `strata predict`, and KDD Cup 99 attacks are detected."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NO_MIRROR, mirror_location
from strata.config import ComponentConfig
from strata.errors import ConfigError, StrataError
from strata.tasks.reconstruct import Config, ReconstructTask, auroc, rates_at

torch.set_num_threads(1)


# --- metrics on toy cases ----------------------------------------------------------------------

def test_auroc_toy_cases():
    from sklearn.metrics import roc_auc_score

    labels = torch.tensor([0, 0, 1, 1, 0, 1], dtype=torch.bool)
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), labels) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), labels) == 0.0
    assert auroc(torch.ones(6), labels) == 0.5  # all tied
    assert np.isnan(auroc(torch.rand(4), torch.zeros(4, dtype=torch.bool)))
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 7, (500,), generator=g).float()  # many ties
    y = torch.rand(500, generator=g) < 0.3
    assert auroc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_rates_at_threshold():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    labels = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)
    r = rates_at(scores, labels, 0.22)  # alarms: 0.3 (fp), 0.9, 0.8, 0.25
    assert r == {"precision": 3 / 4, "recall": 1.0, "fpr": 1 / 3}


def _task(**cfg):
    return ReconstructTask(Config(**cfg), ComponentConfig("autoencoder", {"kind": "mlp", "latent": 4,
                                                                          "hidden": [16]}),
                           {"in_shape": [1, 28, 28], "num_classes": 10})


def test_anomalous_examples_do_not_train():
    task = _task(anomaly_classes=(3, 5))
    batch = {"x": torch.rand(6, 1, 28, 28), "y": torch.tensor([3, 5, 3, 5, 5, 3])}
    loss = task.training_step(batch)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in task.parameters())
    mixed = {"x": batch["x"], "y": torch.tensor([3, 1, 3, 5, 5, 3])}
    only_normal = task.scores(mixed["x"][1:2], task.model(mixed["x"][1:2])).mean()
    torch.testing.assert_close(task.training_step(mixed), only_normal)


def test_threshold_moves_only_after_training():
    task = _task(target_fpr=0.1)
    x = torch.rand(50, 1, 28, 28)
    task.training_step({"x": x[:8]})
    task.validation_start()
    with torch.no_grad():
        task.validation_step({"x": x})
    t1 = task.validation_end()["threshold"]
    scores = task.anomaly_score(x).detach()
    assert t1 == pytest.approx(float(torch.quantile(scores.double(), 0.9)), rel=1e-5)
    # a second evaluation (e.g. on test data) with no training in between keeps it
    task.validation_start()
    with torch.no_grad():
        task.validation_step({"x": x * 0.5})
    assert task.validation_end()["threshold"] == t1


@pytest.mark.parametrize("cfg,info,model,match", [
    ({"anomaly_classes": (12,)}, {"num_classes": 10}, ("autoencoder", {}), "not classes of this data set"),
    ({}, {}, ("mlp", {}), "encoder-decoder"),
])
def test_bad_setups(cfg, info, model, match):
    with pytest.raises(StrataError, match=match):
        ReconstructTask(Config(**cfg), ComponentConfig(*model), {"in_shape": [1, 28, 28], **info})


def test_bad_config_values():
    with pytest.raises(ConfigError, match="noise_level"):
        Config(noise="gaussian")
    with pytest.raises(ConfigError, match="target_fpr"):
        Config(target_fpr=1.5)


# --- real data ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(strata_home):
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(strata_home))
        yield


MNIST = {
    "name": "ae-test",
    "data": {"name": "mnist", "limit": 2000, "batch_size": 64, "val_fraction": 0.05},
    "model": {"name": "autoencoder", "kind": "conv", "latent": 16, "channels": [16, 32]},
    "task": {"name": "reconstruct", "loss": "bce", "anomaly_classes": [0], "noise": "gaussian", "noise_level": 0.1},
    "optimizer": {"lr": 0.003},
    "trainer": {"max_epochs": 2, "progress": "off"},
}


@pytest.fixture(scope="module")
def mnist_run(env, tmp_path_factory):
    from strata.api import train
    from strata.build import build_config
    from strata.data import load_data
    from strata.tasks import build_task

    cfg = build_config(json.loads(json.dumps(MNIST)))
    bundle = load_data(cfg.data)
    torch.manual_seed(0)
    task = build_task(cfg, bundle.info).eval()
    val = bundle.val.tensors
    with torch.no_grad():
        normal = val["y"] != 0
        untrained = float(task.anomaly_score(val["x"][normal]).mean())
    return train(MNIST, run_dir=tmp_path_factory.mktemp("runs") / "ae"), untrained


def test_short_training_lowers_the_reconstruction_loss(mnist_run):
    res, untrained = mnist_run
    s = res.summary
    # Untrained: BCE ~0.69 per pixel; 2 epochs on 2,000 images: ~0.25.
    assert s["val/loss"] < untrained - 0.3, (s["val/loss"], untrained)
    assert 0.0 <= s["test/auroc"] <= 1.0
    assert s["val/fpr_at_threshold"] == pytest.approx(0.01, abs=0.01)


def test_threshold_is_saved_and_used_by_predict(mnist_run, tmp_path, capsys):
    from strata.api import load_run
    from strata.cli import main
    from strata.data import DATASETS

    res, _ = mnist_run
    task = load_run(res.run_dir).task
    saved = float(task.threshold)
    assert saved == pytest.approx(res.summary["val/threshold"])
    assert res.summary["test/threshold"] == pytest.approx(saved)  # testing did not re-tune it

    digit = DATASETS.get("mnist").arrays()[2][1]  # a test image of a 2 (a normal class here)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    noise = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert main(["predict", str(res.run_dir), str(tmp_path / "digit.png"), str(tmp_path / "noise.png"),
                 "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    for p in preds:
        assert p["threshold"] == pytest.approx(saved, rel=1e-5)
        assert p["anomalous"] == (p["anomaly_score"] > p["threshold"])
    assert preds[1]["anomalous"] and preds[1]["anomaly_score"] > preds[0]["anomaly_score"]


def test_explain_attributes_the_anomaly_score(mnist_run, tmp_path):
    """`strata explain` on an autoencoder run: the anomaly score of a noise image is spread over its
    pixels, and integrated gradients accounts for it (a small completeness gap)."""
    from strata.evaluate import explain_run

    noise = (np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    (r,) = explain_run(mnist_run[0].run_dir, [str(tmp_path / "noise.png")], steps=64, out=tmp_path / "heat.png")
    assert r["target"] == "anomaly_score" and r["score"] > 0
    assert abs(r["completeness_gap"]) < 0.05 * r["score"], r
    assert (tmp_path / "heat.png").is_file()


def test_generate_on_an_autoencoder_run_is_a_clear_error(mnist_run, capsys):
    from strata.cli import main

    assert main(["generate", str(mnist_run[0].run_dir), "--n", "4"]) == 2
    assert "does not sample" in capsys.readouterr().err


def test_kddcup99_attacks_are_detected(env, tmp_path):
    from strata.api import load_run, train
    from strata.data.kddcup import KDDCup99

    res = train({"name": "kdd-test", "data": {"name": "kddcup99", "limit": 5000, "max_test": 20000,
                                              "batch_size": 128, "val_fraction": 0.05},
                 "model": {"name": "autoencoder", "kind": "mlp", "latent": 8, "hidden": [32]},
                 "task": {"name": "reconstruct", "loss": "mse"}, "optimizer": {"lr": 0.003},
                 "trainer": {"max_epochs": 3, "progress": "off"}}, run_dir=tmp_path / "kdd")
    s = res.summary
    assert s["test/auroc"] > 0.9, s
    assert s["test/precision_at_1fpr"] > 0.9  # test is ~80% attacks: precision must beat that base rate

    run = load_run(res.run_dir)
    normal = ("0,tcp,http,SF,181,5450,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,8,8,0.00,0.00,0.00,0.00,1.00,0.00,0.00,"
              "9,9,1.00,0.00,0.11,0.00,0.00,0.00,0.00,0.00,normal.")
    batch = KDDCup99().encode_inputs([normal], run.info, res.run_dir)
    assert batch["x"].shape == (1, run.info["in_shape"][0])
    with pytest.raises(StrataError, match="41 features"):
        KDDCup99().encode_inputs(["0,tcp,http"], run.info, res.run_dir)
