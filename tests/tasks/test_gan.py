"""GAN: each phase of a Trainer step moves only its own net, sampling is seeded, generate checks
its options, and a short real training cuts the judge's Frechet distance."""

import pytest
import torch

from strata.build import build_config
from strata.data.base import DataBundle, TensorSplit
from strata.errors import StrataError
from strata.tasks import build_task
from strata.tasks.gan import GAN
from strata.train import Trainer

INFO = {"in_shape": [1, 28, 28], "in_channels": 1, "image_size": 28, "num_classes": 10,
        "class_names": [str(i) for i in range(10)], "normalize": None}
TINY = {"name": "dcgan", "latent_dim": 32, "g_channels": 16, "d_channels": 16}


def raw(conditional=False, spectral_norm=False, **task):
    return {"name": "gan-test", "data": {"name": "mnist", "batch_size": 16},
            "model": {**TINY, "conditional": conditional, "spectral_norm": spectral_norm},
            "task": {"name": "gan", **task}, "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
            "trainer": {"max_epochs": 1, "max_steps": 1, "progress": "off"}}


def make_task(**kw):
    torch.manual_seed(0)
    return build_task(build_config(raw(**kw)), INFO)


def synthetic_bundle(n=32):
    g = torch.Generator().manual_seed(0)
    split = TensorSplit({"x": torch.rand(n, 1, 28, 28, generator=g), "y": torch.randint(0, 10, (n,), generator=g)})
    return DataBundle(train=split, val=split, test=None, info=INFO)


def params(module):
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def moved(a, b):
    return all(not torch.equal(a[k], b[k]) for k in a if a[k].numel() > 1)


@pytest.mark.parametrize("conditional,spectral_norm", [(False, False), (True, True)])
def test_each_trainer_phase_changes_only_its_own_net(tmp_path, monkeypatch, conditional, spectral_norm):
    snaps = {}
    original = GAN.configure_optimizers

    def configure(self, cfg):
        snaps["start"] = (params(self.model.generator), params(self.model.discriminator))
        return original(self, cfg)

    def after(self, name):
        snaps[name] = (params(self.model.generator), params(self.model.discriminator))

    monkeypatch.setattr(GAN, "configure_optimizers", configure)
    monkeypatch.setattr(GAN, "after_optimizer_step", after)
    cfg = build_config(raw(conditional, spectral_norm))
    Trainer(cfg, run_dir=tmp_path / "run", bundle=synthetic_bundle()).fit()

    (g0, d0), (g1, d1), (g2, d2) = snaps["start"], snaps["discriminator"], snaps["generator"]
    assert same(g0, g1) and moved(d0, d1)  # discriminator step: D moved, G untouched
    assert same(d1, d2) and moved(g1, g2)  # generator step: G moved, D untouched


def test_optimisers_take_task_overrides():
    task = make_task(d_lr=4e-4, betas=[0.0, 0.9])
    from strata.config import OptimizerConfig

    specs = task.configure_optimizers(OptimizerConfig(name="adam", lr=2e-4))
    assert list(specs) == ["discriminator", "generator"]
    (d_params, d_cfg), (g_params, g_cfg) = specs["discriminator"], specs["generator"]
    assert d_cfg.lr == 4e-4 and g_cfg.lr == 2e-4 and d_cfg.betas == g_cfg.betas == (0.0, 0.9)
    assert {id(p) for p in d_params}.isdisjoint(id(p) for p in g_params)
    assert len(d_params) + len(g_params) == len(list(task.parameters()))


def test_sampling_is_deterministic_under_a_seed_and_conditional_on_class():
    task = make_task(conditional=True)
    task.eval()
    y = torch.tensor([1, 2, 3])
    a = task.sample(y, 3, torch.Generator().manual_seed(5))
    b = task.sample(y, 3, torch.Generator().manual_seed(5))
    c = task.sample(torch.tensor([4, 5, 6]), 3, torch.Generator().manual_seed(5))
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_generate_large_n_in_batches(tmp_path):
    task = make_task()
    res = task.generate({"n": 600, "out": str(tmp_path / "grid.png"), "out_dir": str(tmp_path / "s")}, tmp_path)
    assert res["n"] == 600 and res["grid_shows"] == 400
    assert len(list((tmp_path / "s").glob("*.png"))) == 600
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (20 * 30 + 2, 20 * 30 + 2)  # 400 samples, 20 per row, 2 px padding
    # A huge --n with only a grid draws just the grid's samples (bounded time and memory).
    res = task.generate({"n": 10**9, "out": str(tmp_path / "big.png")}, tmp_path)
    assert res["n"] == 10**9 and res["grid_shows"] == 400
    res = make_task(conditional=True).generate({"n": 10**9, "out": str(tmp_path / "c.png")}, tmp_path)
    assert res["classes"] == list(range(10)) and res["grid_shows"] == 400


@pytest.mark.parametrize("conditional,request_,message", [
    (False, {"class_": 1}, "class-conditional"),
    (True, {"class_": 12}, "0..9"),
    (True, {"n": 0}, "--n"),
    (True, {"n": 2.5}, "--n"),
    (True, {"steps": 10}, "diffusion"),
    (True, {"guidance": 2.0}, "diffusion"),
    (False, {"interpolate": ["a.png", "b.png"]}, "VAE"),
])
def test_generate_bad_input_is_a_clear_error(tmp_path, conditional, request_, message):
    with pytest.raises(StrataError, match=message):
        make_task(conditional=conditional).generate(request_, tmp_path)


def test_val_frechet_needs_a_judge_run():
    with pytest.raises(StrataError, match="judge_run"):
        task = make_task(val_samples=16)
        task.validation_start()
        task.validation_step({"x": torch.rand(16, 1, 28, 28), "y": torch.zeros(16, dtype=torch.long)})
        task.validation_end()


def test_short_training_cuts_the_judge_frechet_distance(mirror, tmp_path):
    """80 steps of 64 real MNIST digits take the judge's Frechet distance (500 samples vs 500 test
    images) from ~910 (untrained G) to under half of that (~250 measured), and evaluate_report
    wires the same figures in."""
    torch.set_num_threads(1)
    from strata.api import train
    from strata.data import load_data
    from strata.metrics.judge import judge_samples, load_judge
    from strata.tasks import _imagegen as G

    judge_run = train({"name": "judge", "data": {"name": "mnist", "batch_size": 64, "limit": 3000},
                       "model": {"name": "cnn", "channels": [16, 32], "fc_hidden": 64},
                       "task": {"name": "classify"}, "optimizer": {"name": "adam", "lr": 3e-3},
                       "trainer": {"max_epochs": 1, "progress": "off"}}, run_dir=tmp_path / "judge").run_dir
    judge = load_judge(judge_run)
    r = raw(judge_run=str(judge_run), eval_samples=500, eval_batch=256)
    r["data"].update(batch_size=64, limit=64 * 80)
    r["trainer"] = {"max_epochs": 1, "progress": "off"}
    r["optimizer"]["lr"] = 4e-4  # twice DCGAN's rate: a faster start for a short test
    cfg = build_config(r)
    full = load_data(cfg.data)
    real = G._subset(full.test.tensors["x"], 500)  # the same 500 test images evaluate_report uses

    def frechet(task):
        return judge_samples(judge, G.draw(task.sample, 500, None, 0), real, INFO["class_names"])["frechet"]

    torch.manual_seed(0)
    before = frechet(build_task(cfg, full.info))
    small = DataBundle(train=full.train, val=full.val.subset(torch.arange(64)), test=None, info=full.info)
    trainer = Trainer(cfg, run_dir=tmp_path / "gan", bundle=small)
    trainer.fit()
    after = frechet(trainer.task)
    assert after < 0.5 * before, (before, after)

    report = trainer.task.evaluate_report(full, "test", tmp_path / "gan")
    assert report["frechet"] == pytest.approx(after, rel=1e-6)
    assert report["samples"] == 500 and 0 <= report["share_min"] <= 0.1 <= report["share_max"] <= 1
    assert sum(v for k, v in report.items() if k.startswith("share/")) == pytest.approx(1.0)
    assert 0 < report["frechet_real"] < after


def test_predict_gives_the_discriminator_realness():
    x = {"x": torch.rand(3, 1, 28, 28)}
    out = make_task().eval().predict_step(x)
    assert len(out) == 3 and all(0 <= o["realness"] <= 1 for o in out)
    out = make_task(conditional=True).eval().predict_step(x)
    assert all(o["class"] in INFO["class_names"] for o in out)
