"""Sampling helpers: top-k / top-p keep exactly the right tokens; the generation loop restarts a
context-limited model correctly and equals a full recomputation."""

import torch
from torch import nn

from strata.nn.sampling import filter_logits, generate_tokens, sample_next


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    # the most likely token survives however small p is
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).tolist() == [[True, False, False, False]]


def test_sampling_respects_filters_and_seed():
    logits = torch.tensor([[0.0, 0.1, 0.2, 3.0, 2.9]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    s = sample_next(logits, 1.0, top_k=2, generator=g)
    assert set(s.tolist()) == {3, 4}
    assert torch.equal(sample_next(logits, 0.0), torch.full((500,), 3))  # temperature 0 = greedy
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


class WindowModel(nn.Module):
    """A toy causal model whose next-token logits depend on the last 3 tokens within its context; its
    'state' is the token history, so a restart with state=None must rebuild it from the window."""

    context_size = 5

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, tokens, state=None):
        hist = tokens if state is None else torch.cat([state, tokens], 1)
        assert hist.size(1) <= self.context_size, "the loop must never exceed the context"
        self.calls.append(hist.size(1))
        nxt = (hist[:, -3:].sum(1) * 7 + hist.size(1)) % 11  # depends on position within the window, too
        logits = torch.nn.functional.one_hot(nxt, 11).float()[:, None, :].repeat(1, tokens.size(1), 1)
        return logits, hist


def test_generation_restarts_a_context_limited_model_from_its_window():
    m = WindowModel()
    start = torch.tensor([[1, 2, 3]])
    out = generate_tokens(m, start, 8, temperature=0.0)
    # reference: recompute from the last context_size tokens at every step
    ref = start
    for _ in range(8):
        window = ref[:, -5:]
        nxt = (window[:, -3:].sum(1) * 7 + window.size(1)) % 11
        ref = torch.cat([ref, nxt[:, None]], 1)
    assert torch.equal(out, ref)
    assert max(m.calls) == 5


def test_generation_stops_rows_at_eos():
    class Const(nn.Module):
        context_size = None

        def forward(self, tokens, state=None):
            logits = torch.full((tokens.size(0), tokens.size(1), 4), -10.0)
            logits[..., 2] = 10.0
            return logits, None

    out = generate_tokens(Const(), torch.zeros(2, 1, dtype=torch.long), 10, temperature=0.0, eos_id=2)
    assert out.tolist() == [[0, 2], [0, 2]]
