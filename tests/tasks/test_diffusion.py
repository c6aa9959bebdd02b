"""Diffusion: the schedule's closed forms, the forward process's moments, EMA in checkpoints,
deterministic DDPM/DDIM sampling, the generate errors, and a short real training that lowers the
EMA model's noise-prediction loss."""

import io
import math

import pytest
import torch

from strata.build import build_config
from strata.errors import StrataError
from strata.tasks import build_task
from strata.tasks.diffusion import make_betas, respaced

INFO = {"in_shape": [1, 28, 28], "in_channels": 1, "image_size": 28, "num_classes": 10,
        "class_names": [str(i) for i in range(10)], "normalize": None}
TINY = {"name": "unet", "base_channels": 16, "channel_mult": [1, 2], "attention_levels": [1]}


def make_task(conditional=True, **task):
    torch.manual_seed(0)
    cfg = build_config({"data": {"name": "mnist"}, "model": {**TINY, "conditional": conditional},
                        "task": {"name": "diffusion", **task}})
    return build_task(cfg, INFO)


def test_linear_schedule_cumulative_product_matches_closed_form():
    t = make_task(schedule="linear", timesteps=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    # alphabar_t = prod_{s<=t} (1 - beta_s) = exp(sum_{s<=t} log(1 - beta_s))
    closed = torch.exp(torch.cumsum(torch.log1p(-betas), 0))
    assert torch.allclose(t.alphabar_f64, closed, rtol=1e-10, atol=0)
    assert torch.allclose(t.alphabar.double(), closed, rtol=1e-5)
    loop = 1.0
    for s in range(500):
        loop *= 1 - (1e-4 + (0.02 - 1e-4) * s / 999)
    assert t.alphabar_f64[499].item() == pytest.approx(loop, rel=1e-10)
    # DDPM's end point: alphabar_T ~ 4e-5, so x_T is almost pure noise.
    assert 1e-5 < t.alphabar_f64[-1].item() < 1e-4


def test_cosine_schedule_matches_its_definition():
    T, s = 1000, 0.008
    t = make_task(schedule="cosine", timesteps=T)
    f = lambda k: math.cos((k / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = make_betas("cosine", T)
    for k in (1, 10, 250, 500, 900):
        assert betas[k - 1] < 0.999  # unclipped here, so the product telescopes to f(k) / f(0)
        assert t.alphabar_f64[k - 1].item() == pytest.approx(f(k) / f(0), rel=1e-9)
    assert betas.max().item() == pytest.approx(0.999)  # clipped at the very end


def test_forward_noising_has_predicted_mean_and_variance():
    task = make_task(schedule="linear")
    torch.manual_seed(1)
    x0 = torch.rand(1, 1, 28, 28) * 2 - 1
    n = 4000
    x0 = x0[..., :12, :12]  # q_sample works on any image size; a smaller one keeps this fast
    for step in (0, 100, 500, 999):
        t = torch.full((n,), step)
        xt = task.q_sample(x0.expand(n, -1, -1, -1), t, torch.randn(n, *x0.shape[1:]))
        ab = task.alphabar_f64[step].item()
        # mean sqrt(ab) x0 and variance 1 - ab per pixel; standard errors over 144 pixels x 4000 draws
        assert torch.allclose(xt.mean(0), math.sqrt(ab) * x0[0], atol=5 * math.sqrt((1 - ab) / n))
        assert xt.var(0).mean().item() == pytest.approx(1 - ab, rel=0.01, abs=1e-4)
    # One-shot q(x_t | x_0) equals running the chain q(x_s | x_{s-1}) = N(sqrt(1 - beta_s) x, beta_s) t times.
    step = 300
    x = x0.expand(n, -1, -1, -1).clone()
    for s in range(step + 1):
        b = task.betas[s].item()
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn_like(x)
    ab = task.alphabar_f64[step].item()
    assert torch.allclose(x.mean(0), math.sqrt(ab) * x0[0], atol=5 * math.sqrt((1 - ab) / n))
    assert x.var(0).mean().item() == pytest.approx(1 - ab, rel=0.01)


def test_respaced_steps_are_distinct_and_end_at_zero():
    for steps in (1, 2, 7, 50, 999, 1000):
        ts = respaced(1000, steps)
        assert len(set(ts.tolist())) == steps and ts[0] == 999 and (steps == 1 or ts[-1] == 0)


def test_ema_is_in_the_state_dict_and_follows_the_model():
    task = make_task(ema_decay=0.5)
    assert task.eval_module() is task.ema
    assert any(k.startswith("ema.") for k in task.state_dict())
    assert not any(p.requires_grad for p in task.ema.parameters())
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    batch = {"x": torch.rand(4, 1, 28, 28), "y": torch.arange(4)}
    for _ in range(3):
        (loss,) = list(task.training_step(batch))
        opt.zero_grad()
        loss.value.backward()
        opt.step()
        task.after_optimizer_step("main")
    assert int(task.ema_updates) == 3
    w, e = task.model.out[-1].weight, task.ema.out[-1].weight
    assert 0 < (e - 0).abs().sum() < (w - 0).abs().sum()  # moved from the zero init, but lags the model
    clone = make_task(ema_decay=0.5)
    clone.load_state_dict(task.state_dict())
    assert torch.equal(clone.ema.out[-1].weight, e) and int(clone.ema_updates) == 3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_deterministic_under_a_seed_and_in_range(sampler):
    task = make_task()
    # Give the zero-initialised output layer some weight so the samples depend on the network.
    torch.nn.init.normal_(task.ema.out[-1].weight, std=0.05)
    labels = torch.tensor([0, 3, 7])

    def draw(seed, steps=4):
        return task.sample(labels, 3, torch.Generator().manual_seed(seed), steps=steps, guidance=3.0, sampler=sampler)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (3, 1, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    one = draw(0, steps=1)
    assert one.shape == (3, 1, 28, 28) and one.min() >= 0 and one.max() <= 1


def test_generate_writes_grid_and_files_in_batches(tmp_path):
    task = make_task(conditional=False)
    res = task.generate({"n": 300, "steps": 1, "out": str(tmp_path / "g.png"), "out_dir": str(tmp_path / "s"),
                         "seed": 3}, tmp_path)
    assert res["n"] == 300 and (tmp_path / "g.png").is_file()
    assert len(list((tmp_path / "s").glob("*.png"))) == 300
    cond = make_task(conditional=True)
    res = cond.generate({"n": 4, "class_": 7, "steps": 2, "guidance": 2.0, "out": str(tmp_path / "c.png")}, tmp_path)
    assert res["classes"] == [7] and res["guidance"] == 2.0


@pytest.mark.parametrize("conditional,request_,message", [
    (False, {"class_": 3}, "class-conditional"),
    (True, {"class_": 10}, "0..9"),
    (True, {"class_": -1}, "0..9"),
    (True, {"class_": "seven"}, "class name"),
    (False, {"guidance": 2.0}, "conditional"),
    (True, {"guidance": -1.0}, "from 0 to 50"),
    (True, {"n": 0}, "--n"),
    (True, {"n": -5}, "--n"),
    (True, {"steps": 0}, "--steps"),
    (True, {"steps": 1001}, "trained with timesteps = 1000"),
    (True, {"out": "grid.txt"}, ".png"),
    (True, {"prompt": "hi"}, "language models"),
])
def test_generate_bad_input_is_a_clear_error(tmp_path, conditional, request_, message):
    task = make_task(conditional=conditional)
    with pytest.raises(StrataError, match=message):
        task.generate({"steps": 1, **request_} if "steps" not in request_ else request_, tmp_path)


def test_short_training_lowers_the_ema_noise_prediction_loss(mirror, tmp_path):
    """20 steps of 16 real MNIST digits: the EMA model's validation loss (fixed noise and steps)
    falls from ~1.0 (the zero-initialised net predicts no noise) to below 0.4 (~0.15 measured)."""
    torch.set_num_threads(1)
    from strata.data import load_data
    from strata.data.base import DataBundle
    from strata.train import Trainer

    raw = {"name": "ddpm-test", "data": {"name": "mnist", "batch_size": 16, "limit": 320},
           "model": {**TINY, "conditional": True}, "task": {"name": "diffusion", "ema_decay": 0.9},
           "optimizer": {"name": "adam", "lr": 2e-3}, "trainer": {"max_epochs": 1, "progress": "off"}}
    cfg = build_config(raw)
    full = load_data(cfg.data)
    small = DataBundle(train=full.train, val=full.val.subset(torch.arange(128)), test=None, info=full.info)
    trainer = Trainer(cfg, run_dir=tmp_path / "run", bundle=small)
    trainer._setup()
    before = trainer.evaluate_split("val")["val/loss"]
    trainer = Trainer(cfg, run_dir=tmp_path / "run2", bundle=small)
    summary = trainer.fit()
    after = summary["val/loss"]
    assert before == pytest.approx(1.0, abs=0.05)
    assert after < 0.4, (before, after)


def test_generative_recipes_parse():
    from pathlib import Path

    from strata.build import load_config

    root = Path(__file__).resolve().parents[2] / "recipes"
    for name, task in (("mnist-dcgan", "gan"), ("fashion-dcgan", "gan"), ("mnist-ddpm", "diffusion"),
                       ("fashion-ddpm", "diffusion")):
        cfg = load_config(root / f"{name}.toml")
        assert cfg.task.name == task and cfg.task.options["eval_samples"] == 10000


def test_predict_gives_a_denoising_error():
    task = make_task().eval()
    out = task.predict_step({"x": torch.rand(2, 1, 28, 28)})
    assert len(out) == 2 and all(o["denoising_error"] == pytest.approx(1.0, abs=0.1) for o in out)  # zero-init net


def test_long_sampling_reports_progress_and_passes_batches_through():
    import io

    from strata.tasks._imagegen import _reporting

    batches = [(torch.zeros(4, 1, 2, 2), None) for _ in range(3)]
    out = io.StringIO()
    seen = list(_reporting(iter(batches), 12, "samples drawn", every_s=0.0, stream=out))
    assert len(seen) == 3 and all(a is b for a, b in zip(seen, batches))
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["4/12 samples drawn", "8/12 samples drawn", "12/12 samples drawn"]
    assert lines[-1].endswith("~0.0 min left)")


def test_training_banner_counts_the_model_not_its_ema_copy(mirror, tmp_path):
    torch.set_num_threads(1)
    from strata.data import load_data
    from strata.data.base import DataBundle
    from strata.train import Trainer

    cfg = build_config({"name": "banner", "data": {"name": "mnist", "batch_size": 16, "limit": 32},
                        "model": {**TINY, "conditional": True}, "task": {"name": "diffusion"},
                        "trainer": {"max_epochs": 1, "progress": "lines"}})
    full = load_data(cfg.data)
    small = DataBundle(train=full.train, val=full.val.subset(torch.arange(16)), test=None, info=full.info)
    trainer = Trainer(cfg, run_dir=tmp_path / "run", bundle=small)
    out = io.StringIO()
    trainer.progress.stream = out
    trainer.fit()
    n_model = sum(p.numel() for p in trainer.task.model.parameters())
    assert n_model < sum(p.numel() for p in trainer.task.parameters())  # the EMA copy is not counted
    assert f"({n_model:,} parameters)" in out.getvalue()
