"""GPT, encoder classifier and encoder-decoder: causality, padding invariance, KV cache equals a
full recomputation, beam search of width 1 equals greedy, presets and gradients."""

import pytest
import torch

from strata.errors import ConfigError
from strata.models import MODELS, build_model
from strata.models.transformer import GPT_PRESETS, num_params
from strata.nn.sampling import generate_tokens, sample_next


def gpt(positions="learned", context=16, **kw):
    torch.manual_seed(0)
    return build_model("gpt", {"n_layer": 2, "n_head": 2, "dim": 32, "positions": positions,
                               "context_size": context, **kw}, vocab_size=11).eval()


def seq2seq(positions="learned", **kw):
    torch.manual_seed(0)
    return build_model("transformer_seq2seq", {"n_layer": 2, "n_head": 2, "dim": 32, "positions": positions,
                                               "context_size": 12, "dropout": 0.0, **kw},
                       src_vocab_size=13, tgt_vocab_size=17).eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_gpt_is_causal(positions):
    model = gpt(positions)
    x = torch.randint(0, 11, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 11, (2, 5))
    a, _ = model(x)
    b, _ = model(y)
    assert a.shape == (2, 12, 11)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def no_cache_generate(model, ids, steps, temperature, generator):
    """Reference: the whole (cropped) sequence through the model at every step, no state."""
    for _ in range(steps):
        logits, _ = model(ids[:, -model.context_size:])
        nxt = sample_next(logits[:, -1], temperature, 5, 0.9, generator)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_gpt_kv_cache_generation_equals_recomputation(positions, temperature):
    model = gpt(positions, context=16)
    prompt = torch.randint(0, 11, (2, 5))
    # 20 new tokens run past the context of 16, so the cache is also restarted on a cropped window.
    cached = generate_tokens(model, prompt, 20, temperature, 5, 0.9, torch.Generator().manual_seed(3))
    full = no_cache_generate(model, prompt, 20, temperature, torch.Generator().manual_seed(3))
    assert torch.equal(cached, full)


def test_gpt_prompt_longer_than_context_is_cropped_by_the_loop():
    model = gpt(context=8)
    out = generate_tokens(model, torch.randint(0, 11, (1, 30)), 3, 0.0)
    assert out.shape == (1, 33)
    with pytest.raises(ValueError, match="context size"):
        model(torch.randint(0, 11, (1, 9)))


def test_gpt_weights_are_tied_and_presets_build():
    model = gpt()
    assert model.head.weight is model.embed.weight
    big = build_model("gpt", {"preset": "shakespeare-char"}, vocab_size=65)
    assert (big.cfg.n_layer, big.cfg.n_head, big.cfg.dim) == (6, 6, 384)
    assert abs(num_params(big) - 10.745e6) < 0.01e6  # nanoGPT: 10.65 M without position embeddings
    assert set(GPT_PRESETS) >= {"shakespeare-char", "gpt-micro"}


def test_bad_model_options_are_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        build_model("gpt", {"preset": "shakespeare-char", "dim": 128}, vocab_size=65)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_model("gpt", {"preset": "gpt-huge"}, vocab_size=65)
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_model("gpt", {"n_head": 5, "dim": 32}, vocab_size=65)
    with pytest.raises(ConfigError, match="dimm"):
        build_model("gpt", {"dimm": 32}, vocab_size=65)


def test_every_parameter_gets_a_gradient():
    for name, kwargs, run in [
        ("gpt", {"vocab_size": 11}, lambda m: m(torch.randint(0, 11, (2, 6)))[0]),
        ("transformer_classifier", {"vocab_size": 11, "num_classes": 3},
         lambda m: m(torch.randint(0, 11, (2, 6)), torch.tensor([6, 3]))),
        ("transformer_seq2seq", {"src_vocab_size": 13, "tgt_vocab_size": 17},
         lambda m: m(torch.randint(0, 13, (2, 6)), torch.tensor([6, 2]), torch.randint(0, 17, (2, 5)))),
    ]:
        opts = {"n_layer": 1, "n_head": 2, "dim": 16}
        if name == "transformer_classifier":
            opts["pooling"] = "cls"
        model = build_model(name, opts, **kwargs)
        run(model).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing}"
        state = model.state_dict()
        clone = build_model(name, opts, **kwargs)
        clone.load_state_dict(state)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_classifier_ignores_padding(pooling, positions):
    torch.manual_seed(0)
    model = build_model("transformer_classifier", {"n_layer": 2, "n_head": 2, "dim": 32, "pooling": pooling,
                                                   "positions": positions}, vocab_size=11, num_classes=2).eval()
    a = torch.randint(1, 11, (1, 5))
    b = torch.randint(1, 11, (1, 9))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, :5], batch[1] = a[0], b[0]
    batch[0, 5:] = torch.randint(1, 11, (4,))  # garbage in the padding must not matter
    out = model(batch, torch.tensor([5, 9]))
    assert out.shape == (2, 2)
    torch.testing.assert_close(out[0], model(a, torch.tensor([5]))[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(b)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_seq2seq_padding_and_causality(positions):
    model = seq2seq(positions)
    src = torch.randint(0, 13, (1, 4))
    padded = torch.cat([src, torch.randint(0, 13, (1, 3))], 1)
    tgt = torch.randint(0, 17, (1, 6))
    a = model(src, torch.tensor([4]), tgt)
    torch.testing.assert_close(model(padded, torch.tensor([4]), tgt), a, atol=1e-5, rtol=1e-5)
    changed = tgt.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 17
    b = model(src, torch.tensor([4]), changed)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_seq2seq_cached_decoding_equals_recomputation(positions):
    model = seq2seq(positions)
    src = torch.randint(0, 13, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    for t in (0.0, 1.0):
        a = model.generate(src, lengths, 1, 2, max_len=10, temperature=t, top_k=8,
                           generator=torch.Generator().manual_seed(0))
        b = model.generate(src, lengths, 1, 2, max_len=10, temperature=t, top_k=8,
                           generator=torch.Generator().manual_seed(0), use_cache=False)
        assert a == b


def test_beam_of_one_equals_greedy_and_wider_beams_score_no_worse():
    model = seq2seq()
    # Bias towards eos a little so that hypotheses of several lengths occur.
    with torch.no_grad():
        model.head.weight[2] += 0.05
    src = torch.randint(0, 13, (6, 7))
    lengths = torch.tensor([7, 6, 5, 4, 3, 2])
    greedy = model.generate(src, lengths, 1, 2, max_len=10)
    assert model.beam_search(src, lengths, 1, 2, beam_size=1, max_len=10) == greedy

    def logprob(i, hyp):
        tgt = torch.tensor([[1] + hyp + ([2] if len(hyp) < 10 else [])])
        logp = model(src[i:i + 1], lengths[i:i + 1], tgt[:, :-1]).log_softmax(-1)
        return logp[0].gather(-1, tgt[0, 1:, None]).sum().item()

    beams = model.beam_search(src, lengths, 1, 2, beam_size=4, max_len=10, length_penalty=0.0)
    for i in range(6):  # no length normalisation: beam search maximises the raw log-probability
        assert logprob(i, beams[i]) >= logprob(i, greedy[i]) - 1e-4


def test_registered():
    assert {"gpt", "transformer_classifier", "transformer_seq2seq"} <= set(MODELS.names())
