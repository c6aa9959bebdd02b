"""The contract every registered model keeps (Keras' run_layer_test, timm's list_models sweep): it builds
from its Config, gives outputs of the promised shape, gradients reach every parameter, and a state_dict
round trip reproduces its outputs exactly. A model added without a case here fails the sweep."""

from __future__ import annotations

import pytest
import torch

from strata.models import MODELS

B = 3


def _img(c=1, s=28):
    return torch.rand(B, c, s, s)


def _tokens(v=20, t=7):
    return torch.randint(1, v, (B, t))


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _pairs():
    return torch.tensor([1, 2, 0]), torch.tensor([3, 0, 8])  # (user, item); 0 = unseen in training


# name -> (config options, inputs, expected shape of the first output)
CASES = {
    "mf": ({"num_users": 6, "num_items": 9, "dim": 4}, _pairs, (B,)),
    "neumf": ({"num_users": 6, "num_items": 9, "gmf_dim": 4, "mlp_dims": [8, 4]}, _pairs, (B,)),
    "autorec": ({"num_users": 6, "num_items": 9, "hidden": 5}, _pairs, (B,)),
    "mlp": ({"hidden": [16, 16]}, lambda: (_img(),), (B, 10)),
    "cnn": ({"channels": [4, 8], "fc_hidden": 16}, lambda: (_img(),), (B, 10)),
    "resnet": ({"widths": [4, 8], "blocks_per_stage": 1}, lambda: (_img(),), (B, 10)),
    "rnn_classifier": ({"vocab_size": 20, "num_classes": 4, "hidden": 8, "embed_dim": 8, "bidirectional": True,
                        "layers": 2}, lambda: (_tokens(), torch.tensor([7, 4, 2])), (B, 4)),
    "rnn_lm": ({"vocab_size": 20, "hidden": 8, "embed_dim": 8, "layers": 2, "dropout": 0.0},
               lambda: (_tokens(),), (B, 7, 20)),
    "gpt": ({"vocab_size": 20, "context_size": 16, "n_layer": 2, "n_head": 2, "dim": 16},
            lambda: (_tokens(),), (B, 7, 20)),
    "transformer_classifier": ({"vocab_size": 20, "num_classes": 2, "context_size": 16, "n_layer": 1, "n_head": 2,
                                "dim": 16, "dropout": 0.0}, lambda: (_tokens(), torch.tensor([7, 4, 2])), (B, 2)),
    "transformer_seq2seq": ({"src_vocab_size": 20, "tgt_vocab_size": 24, "context_size": 16, "n_layer": 1,
                             "n_head": 2, "dim": 16, "dropout": 0.0},
                            lambda: (_tokens(), torch.tensor([7, 5, 3]), _tokens(24, 6)), (B, 6, 24)),
    "autoencoder": ({"latent": 4, "channels": [4, 8]}, lambda: (_img(),), (B, 1, 28, 28)),
    "vae": ({"latent": 4, "channels": [4, 8], "hidden": 16}, lambda: (_img(),), (B, 1, 28, 28)),
    "dcgan": ({"latent_dim": 8, "g_channels": 8, "d_channels": 8}, lambda: (torch.randn(B, 8),), (B, 1, 28, 28)),
    "unet": ({"base_channels": 8, "channel_mult": [1, 2], "attention_levels": [1], "heads": 2, "dropout": 0.0},
             lambda: (_img(), torch.randint(0, 1000, (B,))), (B, 1, 28, 28)),
    "sequential": ({"in_shape": [1, 28, 28], "num_classes": 10, "layers": [
                       {"kind": "conv2d", "channels": 4, "kernel": 3, "padding": 1}, {"kind": "batchnorm"},
                       {"kind": "relu"}, {"kind": "maxpool2d", "kernel": 2},
                       {"kind": "residual", "layers": [{"kind": "conv2d", "channels": 4, "kernel": 3, "padding": 1}]},
                       {"kind": "flatten"}, {"kind": "dropout", "p": 0.1}, {"kind": "linear"}]},
                   lambda: (_img(),), (B, 10)),
    "encoder_classifier": ({"encoder": "autoencoder", "encoder_options": {"latent": 4, "channels": [4, 8]},
                            "num_classes": 10}, lambda: (_img(),), (B, 10)),
}


def test_every_registered_model_has_a_contract_case():
    shipped = [n for n in MODELS.names() if not n.startswith("toy_")]  # tests register toy_* models
    assert sorted(CASES) == shipped


# Parameters a forward pass does not reach by design: a GAN's forward is its generator.
UNUSED_BY_FORWARD = {"dcgan": "discriminator."}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_contract(name):
    options, inputs, shape = CASES[name]
    cls = MODELS.get(name)
    from strata.config import from_dict

    torch.manual_seed(0)
    model = cls(from_dict(cls.Config, options, "[model]"))
    args = inputs()
    model.train()
    out = _first(model(*args))
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()

    out.float().pow(2).mean().backward()
    skip = UNUSED_BY_FORWARD.get(name)
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not (skip and n.startswith(skip))]
    assert not missing, f"no gradient reaches {missing[:3]}"

    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)  # a VAE samples its latent even in eval mode
        ref = _first(model(*args))
    clone = cls(model.cfg if hasattr(model, "cfg") else from_dict(cls.Config, options, "[model]"))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        assert torch.equal(_first(clone(*args)), ref)
