"""Frechet distance against its closed forms, and the judge's figures on real and junk images."""

import numpy as np
import pytest
import scipy.linalg
import torch

from strata.errors import StrataError
from strata.metrics.frechet import frechet_distance, frechet_from_features, gaussian_stats


def random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_a_set_against_itself_is_zero():
    f = torch.randn(2000, 32)
    assert frechet_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # A shift by c moves only the mean term: d^2 = |c|^2.
    c = torch.full((32,), 0.5)
    assert frechet_from_features(f, f + c) == pytest.approx(32 * 0.25, rel=1e-8)


def test_matches_closed_forms_for_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(4 + 1)
    # Diagonal (commuting) covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # General covariances: tr(S1 + S2 - 2 (S1 S2)^{1/2}) with scipy's matrix square root.
    s1, s2 = random_cov(rng, 10), random_cov(rng, 10)
    m1, m2 = rng.normal(size=10), rng.normal(size=10)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and >= 0.
    low = torch.randn(5, 20)
    assert 0 <= frechet_from_features(low, torch.randn(5, 20)) < float("inf")


def test_sample_estimate_converges_to_the_population_value():
    rng = np.random.default_rng(1)
    s1, s2 = random_cov(rng, 4), random_cov(rng, 4)
    m1, m2 = np.zeros(4), np.full(4, 0.3)
    want = frechet_distance(m1, s1, m2, s2)
    x = rng.multivariate_normal(m1, s1, size=50_000)
    y = rng.multivariate_normal(m2, s2, size=50_000)
    mu, cov = gaussian_stats(x)
    assert np.allclose(mu, x.mean(0)) and np.allclose(cov, np.cov(x, rowvar=False))
    assert frechet_from_features(x, y) == pytest.approx(want, rel=0.05)


@pytest.fixture(scope="module")
def mnist_and_judge(tmp_path_factory):
    """A small judge (one epoch on 3,000 MNIST digits, ~92% test accuracy) and the data."""
    import os
    from pathlib import Path

    where = os.environ.get("STRATA_DATA_MIRROR") or str(Path(__file__).resolve().parents[2].parent / "shared" / "datasets")
    if not Path(where).is_dir() and "://" not in where:
        pytest.skip(f"no data mirror: set STRATA_DATA_MIRROR (looked for {where})")
    mp = pytest.MonkeyPatch()
    mp.setenv("STRATA_DATA_MIRROR", where)
    mp.setenv("STRATA_HOME", str(tmp_path_factory.mktemp("home")))
    torch.set_num_threads(1)
    from strata.api import train
    from strata.build import build_config
    from strata.data import load_data
    from strata.metrics.judge import load_judge

    run = train({"name": "judge", "data": {"name": "mnist", "batch_size": 64, "limit": 3000},
                 "model": {"name": "cnn", "channels": [16, 32], "fc_hidden": 64},
                 "task": {"name": "classify"}, "optimizer": {"name": "adam", "lr": 3e-3},
                 "trainer": {"max_epochs": 1, "progress": "off"}}, run_dir=tmp_path_factory.mktemp("judge") / "run")
    data = load_data(build_config({"data": {"name": "mnist"}, "model": {"name": "cnn"},
                                   "task": {"name": "classify"}}).data)
    yield data, load_judge(run.run_dir), run.run_dir
    mp.undo()


def test_judge_figures_on_real_and_junk_images(mnist_and_judge):
    from strata.metrics.judge import judge_samples

    data, judge, _ = mnist_and_judge
    names = data.info["class_names"]
    test_x, test_y = data.test.tensors["x"], data.test.tensors["y"]
    train_x, train_y = data.train.tensors["x"][:1000], data.train.tensors["y"][:1000]
    # Real training digits "asked for" with their true labels: recognised = the judge's accuracy.
    real = judge_samples(judge, [(train_x[:500], train_y[:500]), (train_x[500:], train_y[500:])], test_x[:1000],
                         names, real_reference=test_x[1000:2000])
    assert real["recognised"] > 0.85 and real["share_min"] > 0.04
    assert sum(real[f"share/{n}"] for n in names) == pytest.approx(1.0)
    # Uniform noise is far from digits; blank images collapse onto one or two classes.
    noise = judge_samples(judge, [(torch.rand(1000, 1, 28, 28), None)], test_x[:1000], names)
    blank = judge_samples(judge, [(torch.zeros(1000, 1, 28, 28), None)], test_x[:1000], names)
    assert real["frechet"] < 0.1 * noise["frechet"]
    assert real["frechet_real"] < 0.1 * noise["frechet"]
    assert blank["share_max"] == 1.0 and blank["share_min"] == 0.0 and "recognised" not in blank


def test_judge_errors(mnist_and_judge, tmp_path):
    from strata.metrics.judge import resolve_judge

    data, judge, run_dir = mnist_and_judge
    with pytest.raises(StrataError, match="not a folder"):
        resolve_judge(str(tmp_path / "missing"), "mnist", data.info)
    other = {**data.info, "in_shape": [3, 32, 32]}
    with pytest.raises(StrataError, match="shape"):
        resolve_judge(str(run_dir), "mnist", other)
    fashion = {**data.info, "class_names": ["T-shirt"] + data.info["class_names"][1:]}
    with pytest.raises(StrataError, match="classes"):
        resolve_judge(str(run_dir), "mnist", fashion)
    # No judge_run, no cached judge and training not allowed: None, not an error.
    assert resolve_judge("", "mnist", data.info, train_if_missing=False) is None


@pytest.mark.parametrize("task", ["diffusion", "gan"])
def test_evaluate_report_of_conditional_generators(mnist_and_judge, tmp_path, task):
    """evaluate_report judges eval_samples samples (classes in turn) against the split."""
    from strata.build import build_config
    from strata.tasks import build_task

    data, _, run_dir = mnist_and_judge
    model = ({"name": "unet", "base_channels": 16, "channel_mult": [1, 2], "attention_levels": [1]}
             if task == "diffusion" else {"name": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8})
    opts = {"sample_steps": 2} if task == "diffusion" else {}
    cfg = build_config({"data": {"name": "mnist"}, "model": {**model, "conditional": True},
                        "task": {"name": task, "judge_run": str(run_dir), "eval_samples": 40, "eval_batch": 16, **opts}})
    torch.manual_seed(0)
    report = build_task(cfg, data.info).evaluate_report(data, "test", tmp_path)
    assert report["samples"] == 40 and report["frechet"] > report["frechet_real"] > 0
    assert 0 <= report["recognised"] <= 1 and 0 <= report["recognised_min_class"] <= report["recognised"]
    assert sum(report[f"share/{n}"] for n in data.info["class_names"]) == pytest.approx(1.0)
