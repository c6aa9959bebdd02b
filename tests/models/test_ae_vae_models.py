"""Autoencoder, VAE and encoder-classifier models: contract (shapes, gradients, state_dict round
trip), preset parameter counts, the VAE's KL and likelihoods against torch.distributions."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D

from strata.errors import ConfigError, StrataError
from strata.models import build_model
from strata.models import autoencoder as A
from strata.models import vae as V

torch.set_num_threads(1)

CASES = [
    ("autoencoder", {"kind": "mlp", "latent": 8, "hidden": [64, 32]}, (1, 28, 28)),
    ("autoencoder", {"kind": "conv", "latent": 8, "channels": [8, 16]}, (1, 28, 28)),
    ("autoencoder", {"kind": "conv", "latent": 8, "channels": [8, 16, 16]}, (3, 32, 32)),
    ("autoencoder", {"kind": "mlp", "latent": 4, "hidden": [16]}, (118,)),
    ("vae", {"latent": 8, "channels": [8, 16], "hidden": 32}, (1, 28, 28)),
    ("vae", {"latent": 8, "channels": [8, 16], "hidden": 32, "likelihood": "gaussian"}, (3, 32, 32)),
    ("encoder_classifier", {"encoder": "vae", "encoder_options": {"latent": 8, "channels": [8, 16], "hidden": 32},
                            "num_classes": 10, "head_hidden": 16}, (1, 28, 28)),
    ("encoder_classifier", {"encoder": "autoencoder", "encoder_options": {"kind": "mlp", "latent": 8},
                            "num_classes": 3}, (1, 28, 28)),
]


def _loss(model, out, x):
    if isinstance(out, tuple):  # VAE: (decoder output, mu, logvar)
        return model.nll(out[0], x).mean() + V.gaussian_kl(out[1], out[2]).mean()
    return out.float().pow(2).mean()


@pytest.mark.parametrize("name,opts,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_contract(name, opts, shape):
    torch.manual_seed(0)
    model = build_model(name, opts, in_shape=shape)
    x = torch.rand(4, *shape)
    out = model(x)
    if name == "encoder_classifier":
        assert out.shape == (4, opts["num_classes"])
    elif name == "vae":
        assert out[0].shape == x.shape and out[1].shape == out[2].shape == (4, opts["latent"])
        assert model.mean_image(out[0]).min() >= 0 and model.mean_image(out[0]).max() <= 1
    else:
        assert out.shape == x.shape
    # the encoder gives (B, out_features)
    assert model.encoder(x).shape == (4, model.encoder.out_features)
    _loss(model, out, x).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reached {missing}"
    # state_dict round trip
    other = build_model(name, opts, in_shape=shape)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    with torch.no_grad():
        a, b = model.encoder(x), other.encoder(x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("module", [A, V])
def test_preset_parameter_counts(module):
    cls = A.Autoencoder if module is A else V.VAE
    for name, (cfg, count) in module.PRESETS.items():
        assert sum(p.numel() for p in cls(cfg).parameters()) == count, name


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu = torch.randn(3, 5) * 1.5
    logvar = torch.randn(3, 5)
    analytic = V.gaussian_kl(mu, logvar)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    p = D.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))  # (S, 3, 5)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # E_q[log q(z) - log p(z)]
    # Monte Carlo standard error here is ~0.01-0.03 nats; allow ~5 of them.
    torch.testing.assert_close(mc, analytic, atol=0.1, rtol=0.01)
    # and the closed form agrees with torch's own
    torch.testing.assert_close(analytic, D.kl_divergence(q, p).sum(-1))


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    vb = V.VAE(V.Config(latent=4, channels=(8,), hidden=16))
    out = torch.randn(2, 1, 28, 28)
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    ref = -D.Bernoulli(logits=out).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(vb.nll(out, x), ref)
    vg = V.VAE(V.Config(latent=4, channels=(8,), hidden=16, likelihood="gaussian"))
    with torch.no_grad():
        vg.log_sigma.fill_(-1.3)
    x = torch.rand(2, 1, 28, 28)
    ref = -D.Normal(out, torch.exp(torch.tensor(-1.3))).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(vg.nll(out, x), ref)


def test_sample_is_seeded_and_in_range():
    vae = V.VAE(V.Config(latent=4, channels=(8,), hidden=16)).eval()
    a = vae.sample(5, torch.Generator().manual_seed(3))
    b = vae.sample(5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 28, 28) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_frozen_encoder_keeps_weights_and_batchnorm_statistics():
    model = build_model("encoder_classifier", {"encoder": "autoencoder", "encoder_options": {"kind": "conv"},
                                               "freeze_encoder": True}, in_shape=(1, 28, 28))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
    loss.backward()
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(p.requires_grad for p in model.head.parameters())


@pytest.mark.parametrize("name,opts,shape,match", [
    ("autoencoder", {"kind": "conv"}, (118,), "use kind = 'mlp'"),
    ("autoencoder", {"kind": "conv", "channels": [8, 8, 8]}, (1, 28, 28), "divisible by 8"),
    ("autoencoder", {"latent": 0}, (1, 28, 28), "latent"),
    ("vae", {"likelihood": "poisson"}, (1, 28, 28), "likelihood"),
    ("encoder_classifier", {}, (1, 28, 28), "exactly one of init_from"),
    ("encoder_classifier", {"init_from": "/nonexistent/run"}, (1, 28, 28), "not a strata run folder"),
    ("encoder_classifier", {"encoder": "mlp_nope"}, (1, 28, 28), "unknown"),
])
def test_bad_configs_say_what_to_do(name, opts, shape, match):
    with pytest.raises(StrataError, match=match):
        build_model(name, opts, in_shape=shape)


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError, match=r"\[model\] kind"):
        A.Config(in_shape=(10,), kind="conv")
