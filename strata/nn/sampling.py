"""Sampling the next token: temperature, top-k and nucleus (top-p) filtering, and one generation
loop shared by every autoregressive model (recurrent LM, GPT).

Top-p follows Holtzman et al., "The Curious Case of Neural Text Degeneration" (ICLR 2020): keep the
smallest set of most likely tokens whose probabilities sum to at least p.

The model protocol the loop (and the `language_model` task) relies on
---------------------------------------------------------------------
    logits, state = model(tokens, state=None)
        tokens: (B, T) int64; logits: (B, T, vocab); state: anything the model needs to continue
        (an LSTM's (h, c), a transformer's KV cache), passed back unchanged on the next call with
        only the new tokens. state=None means "start from scratch".
    model.context_size: int | None
        the longest sequence the model may see at once (a GPT's block size), or None when the
        state carries an unbounded past (a recurrent network).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: (B, V)."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass of the tokens strictly before it already reaches p,
        # so the most likely token always survives
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V) -> (B,). temperature == 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    generator: torch.Generator | None = None, eos_id: int | None = None,
                    on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue `ids` (B, T) by `max_new_tokens` tokens -> (B, T + new) (fewer if every row hit eos).
    `on_token(next_ids)` (B,) is called as each token is drawn, for streaming; an exception it raises
    stops the generation.

    The prompt runs once; after that only the newest token is fed, with the model's state. A model
    with a finite `context_size` is restarted on the last `context_size` tokens (state=None) whenever
    its state would grow past that, which is what a GPT with a KV cache of fixed size must do.
    """
    context = getattr(model, "context_size", None)
    out = ids
    feed = ids if context is None else ids[:, -context:]
    seen = feed.size(1)  # tokens the state currently holds
    state = None
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits, state = model(feed, state=state)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            nxt = nxt.masked_fill(done, eos_id)
            done = done | (nxt == eos_id)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if on_token is not None:
            on_token(nxt)
        if eos_id is not None and bool(done.all()):
            break
        if context is not None and seen + 1 > context:
            feed, state, seen = out[:, -context:], None, context
        else:
            feed, seen = nxt[:, None], seen + 1
    return out
