"""Recurrent models: packing parity (a padded batch equals each sequence alone), pooling, the LM's
state carrying, weight tying, config errors."""

import pytest
import torch

from strata.config import ConfigError
from strata.models import build_model
from strata.models.rnn import PRESETS, Recurrent

torch.set_num_threads(1)


def _ragged(cell, bidirectional, layers=2):
    torch.manual_seed(0)
    enc = Recurrent(cell, 5, 7, layers, bidirectional, dropout=0.0).eval()
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 5)
    x[valid_pad(lengths, 6)] = 123.0  # garbage in the padding must not leak into anything
    return enc, x, lengths


def valid_pad(lengths, T):
    return torch.arange(T)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_batch_equals_each_sequence_alone(cell, bidirectional):
    enc, x, lengths = _ragged(cell, bidirectional)
    with torch.no_grad():
        out, state = enc(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            ref_out, ref_state = enc.rnn(x[i:i + 1, :n])  # the torch module on the bare sequence
            torch.testing.assert_close(out[i, :n], ref_out[0], rtol=1e-5, atol=1e-6)
            assert torch.all(out[i, n:] == 0)
            h, ref_h = (state[0], ref_state[0]) if cell == "lstm" else (state, ref_state)
            torch.testing.assert_close(h[:, i], ref_h[:, 0], rtol=1e-5, atol=1e-6)
            # last_hidden: forward direction at the last valid step, backward at the first
            D = 2 if bidirectional else 1
            last = enc.last_hidden(state)[i]
            torch.testing.assert_close(last[:7], ref_out[0, n - 1, :7], rtol=1e-5, atol=1e-6)
            if D == 2:
                torch.testing.assert_close(last[7:], ref_out[0, 0, 7:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_classifier_ignores_padding_and_batch_mates(pool):
    torch.manual_seed(0)
    m = build_model("rnn_classifier", {"cell": "lstm", "hidden": 8, "embed_dim": 6, "bidirectional": True,
                                       "layers": 2, "pool": pool}, vocab_size=20, num_classes=3).eval()
    tokens = torch.randint(4, 20, (3, 9))
    lengths = torch.tensor([9, 3, 5])
    tokens[valid_pad(lengths, 9)] = 0
    with torch.no_grad():
        batch = m(tokens, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = m(tokens[i:i + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-5, atol=1e-6)
    assert batch.shape == (3, 3)


def test_classifier_on_feature_frames_gets_gradients_everywhere():
    m = build_model("rnn_classifier", {"cell": "gru", "hidden": 8, "embed_dim": 0, "layers": 2, "dropout": 0.1},
                    in_features=4, num_classes=5)
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 2])
    m(x, lengths).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_lm_state_carries_the_past():
    torch.manual_seed(0)
    m = build_model("rnn_lm", {"hidden": 16, "layers": 2, "dropout": 0.0}, vocab_size=11).eval()
    tokens = torch.randint(0, 11, (2, 10))
    with torch.no_grad():
        full, _ = m(tokens)
        a, state = m(tokens[:, :6])
        b, _ = m(tokens[:, 6:], state=state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-6)
    assert full.shape == (2, 10, 11) and m.context_size is None


def test_lm_tied_weights_share_the_matrix():
    m = build_model("rnn_lm", {"hidden": 16, "embed_dim": 8, "tie_weights": True}, vocab_size=11)
    assert m.decoder.weight is m.embed.weight
    n_tied = sum(p.numel() for p in m.parameters())
    m2 = build_model("rnn_lm", {"hidden": 16, "embed_dim": 8}, vocab_size=11)
    assert n_tied < sum(p.numel() for p in m2.parameters())


def test_presets_parameter_counts():
    from strata.models import MODELS

    for name, (model, cfg, count) in PRESETS.items():
        assert sum(p.numel() for p in MODELS.get(model)(cfg).parameters()) == count, name


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="vocab_size / in_features"):
        build_model("rnn_classifier", {}, num_classes=2)
    with pytest.raises(ConfigError, match="cell"):
        build_model("rnn_lm", {"cell": "lstn"}, vocab_size=5)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("rnn_lm", {"dropout": 1.5}, vocab_size=5)
