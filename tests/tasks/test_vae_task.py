"""The 'vae' task: a short training on real MNIST lowers the negative ELBO by a margin; generate
validates its options, samples in bounded batches, is seeded, and interpolates between images;
the encoder of the trained VAE seeds a classifier ('encoder_classifier')."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NO_MIRROR, mirror_location
from strata.errors import StrataError

torch.set_num_threads(1)

CFG = {
    "name": "vae-test",
    "data": {"name": "mnist", "limit": 2000, "batch_size": 64, "val_fraction": 0.02},
    "model": {"name": "vae", "latent": 8, "channels": [16, 32], "hidden": 128},
    "task": {"name": "vae"},
    "optimizer": {"lr": 0.003},
    "trainer": {"max_epochs": 2, "progress": "off", "seed": 0},
}


@pytest.fixture(scope="module")
def env(strata_home):
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(strata_home))
        yield


def nelbo_of(task, split) -> float:
    x = split.tensors["x"]
    total = 0.0
    task.eval()
    with torch.no_grad():
        for i in range(0, len(x), 500):
            total += float(task.validation_step({"x": x[i:i + 500]})["nelbo"][0])
    return total / len(x)


@pytest.fixture(scope="module")
def vae_run(env, tmp_path_factory):
    from strata.api import train
    from strata.build import build_config
    from strata.data import load_data
    from strata.tasks import build_task

    cfg = build_config(json.loads(json.dumps(CFG)))
    bundle = load_data(cfg.data)
    torch.manual_seed(0)
    untrained = nelbo_of(build_task(cfg, bundle.info), bundle.val)
    res = train(CFG, run_dir=tmp_path_factory.mktemp("runs") / "vae")
    return res, untrained


def test_short_training_lowers_the_negative_elbo(vae_run):
    res, untrained = vae_run
    s = res.summary
    # Untrained: ~545 nats (784 pixels x ln 2 plus a little KL). 2 epochs on 2,000 images: ~200.
    assert s["val/nelbo"] < untrained - 200, (s["val/nelbo"], untrained)
    assert s["test/nelbo"] < untrained - 200
    assert s["test/nelbo"] == pytest.approx(s["test/recon"] + s["test/kl"], rel=1e-4)
    assert s["test/kl"] > 1.0  # the latent is used


def _load(res):
    from strata.api import load_run

    return load_run(res.run_dir).task


@pytest.mark.parametrize("request_, match", [
    ({"n": 0}, "--n must be"),
    ({"n": -3}, "--n must be"),
    ({"n": 2.5}, "--n must be"),
    ({"n": True}, "--n must be"),
    ({"class_": 3}, "unconditional"),
    ({"guidance": 2.0}, "--guidance"),
    ({"steps": 10}, "--steps"),
    ({"interpolate": ["a.png"]}, "two image files"),
])
def test_generate_rejects_bad_options(vae_run, tmp_path, request_, match):
    task = _load(vae_run[0])
    with pytest.raises(StrataError, match=match):
        task.generate({**request_, "out": str(tmp_path / "g.png")}, tmp_path)


def test_generate_cli_bad_input_exits_2(vae_run, capsys):
    from strata.cli import main

    assert main(["generate", str(vae_run[0].run_dir), "--class", "3"]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_large_n_is_generated_in_bounded_batches(vae_run, tmp_path, monkeypatch):
    from strata.tasks import _imagegen as G

    monkeypatch.setattr(G, "MAX_GRID", 100)
    task = _load(vae_run[0])
    sizes = []
    real = task.model.sample

    def spy(n, generator=None):
        sizes.append(n)
        return real(n, generator)

    monkeypatch.setattr(task.model, "sample", spy)
    out = task.generate({"n": 300, "seed": 1, "out": str(tmp_path / "grid.png"), "out_dir": str(tmp_path / "each")},
                        tmp_path)
    assert len(sizes) >= 2 and max(sizes) <= G.GEN_BATCH and sum(sizes) == 300
    assert len(list((tmp_path / "each").glob("*.png"))) == 300
    assert out["grid_shows"] == 100
    w, h = Image.open(tmp_path / "grid.png").size
    assert (w, h) == (10 * 30 + 2, 10 * 30 + 2)  # 10 x 10 samples of 28 px with 2 px padding


def test_generate_is_seeded(vae_run, tmp_path):
    task = _load(vae_run[0])
    a = task.generate({"n": 16, "seed": 7, "out": str(tmp_path / "a.png")}, tmp_path)
    b = task.generate({"n": 16, "seed": 7, "out": str(tmp_path / "b.png")}, tmp_path)
    c = task.generate({"n": 16, "seed": 8, "out": str(tmp_path / "c.png")}, tmp_path)
    read = lambda p: np.asarray(Image.open(p))  # noqa: E731
    assert np.array_equal(read(a["out"]), read(b["out"]))
    assert not np.array_equal(read(a["out"]), read(c["out"]))


def _digit_png(path: Path, index: int, size: int = 28) -> Path:
    from strata.data import DATASETS

    x = DATASETS.get("mnist").arrays()[2][index]  # (28, 28) uint8 test image
    Image.fromarray(x).resize((size, size)).save(path)
    return path


def test_interpolate(vae_run, tmp_path):
    task = _load(vae_run[0])
    a, b = _digit_png(tmp_path / "a.png", 0), _digit_png(tmp_path / "b.png", 1)
    out = task.generate({"interpolate": [str(a), str(b)], "n": 6, "out": str(tmp_path / "walk.png")}, tmp_path)
    assert out["steps"] == 6
    assert Image.open(out["out"]).size == (8 * 30 + 2, 30 + 2)  # a, 6 steps, b in one row

    big = _digit_png(tmp_path / "big.png", 2, size=32)
    with pytest.raises(StrataError, match="32x32 pixels; this model takes 28x28"):
        task.generate({"interpolate": [str(a), str(big)]}, tmp_path)
    with pytest.raises(StrataError, match="does not exist"):
        task.generate({"interpolate": [str(a), str(tmp_path / "missing.png")]}, tmp_path)


def test_encoder_classifier_starts_from_the_vae_encoder(vae_run, tmp_path):
    from strata.api import load_run, train
    from strata.models import build_model

    run_dir = vae_run[0].run_dir
    enc = load_run(run_dir).task.model.encoder.state_dict()
    pre = build_model("encoder_classifier", {"init_from": str(run_dir)}, in_shape=(1, 28, 28))
    scratch = build_model("encoder_classifier", {"init_from": str(run_dir), "pretrained": False},
                          in_shape=(1, 28, 28))
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(v, enc[k]), k
    assert not torch.equal(scratch.encoder.mu.weight, enc["mu.weight"])
    with pytest.raises(StrataError, match="trained on inputs of shape"):
        build_model("encoder_classifier", {"init_from": str(run_dir)}, in_shape=(1, 32, 32))

    # a classifier run from it trains, and is loaded again for predict
    res = train({"name": "probe", "data": {"name": "mnist", "limit": 100, "val_fraction": 0.0, "batch_size": 20},
                 "model": {"name": "encoder_classifier", "init_from": str(run_dir), "freeze_encoder": True},
                 "task": {"name": "classify"}, "optimizer": {"lr": 0.01},
                 "trainer": {"max_epochs": 20, "progress": "off"}}, run_dir=tmp_path / "probe")
    assert res.summary["test/acc"] > 0.3  # a linear probe on 8 VAE latents, 100 labels (chance: 0.1)
    assert load_run(res.run_dir).task.model.cfg.freeze_encoder
