"""Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2) computed by
`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel (flash, memory
efficient or math) for the device.

One module serves the three uses of a transformer:
- self-attention, bidirectional (an encoder) or causal (a decoder), with keys hidden by padding;
- cross-attention, queries from the decoder and keys/values from the encoder output (`context`);
- incremental decoding with a KV cache: keys and values of past positions are kept, so each new
  token costs one query against the cache instead of a pass over the whole prefix.

Masks are boolean with True = may attend, the convention of scaled_dot_product_attention.

For explanations there is a slow path that also returns the attention weights (the fused kernels
never form them): `record_attention(model)` makes every attention layer inside `model` compute
softmax(Q K^T / sqrt(d) + mask) itself and keep its weights, (B, H, T, S) per call, for as long as
the context lasts. It gives the fast path's output (tested to 1e-5) and is used only to explain.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from strata.nn.rotary import apply_rotary


class LayerCache:
    """Keys and values one attention layer has seen, each (B, H, T_past, D)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions; return keys and values of all positions so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)  # (B, H, T_past + T, D)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search: the surviving beams' parents)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class KVCache:
    """One LayerCache per attention layer of a model (self- and cross-attention kept apart).

    `len(cache)` is the number of positions already decoded, i.e. the position of the next token.
    """

    def __init__(self, n_layers: int, cross: bool = False):
        self.self_attn = [LayerCache() for _ in range(n_layers)]
        # Cross-attention keys/values depend only on the encoder output: computed once, then reused.
        self.cross_attn = [LayerCache() for _ in range(n_layers)] if cross else None

    def __len__(self) -> int:
        return len(self.self_attn[0])

    def reorder(self, index: torch.Tensor) -> None:
        for c in self.self_attn + (self.cross_attn or []):
            c.reorder(index)


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) boolean, True at real tokens."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """(t_q, t_k) boolean for queries that are the last t_q of t_k positions: query i sits at
    position t_k - t_q + i and sees keys up to and including it (bottom-right aligned)."""
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    return torch.arange(t_k, device=device)[None, :] <= q_pos


def attention_with_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           is_causal: bool, dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The slow path of scaled_dot_product_attention: (output (B, H, T, D), weights (B, H, T, S))."""
    T, S = q.shape[-2], k.shape[-2]
    if is_causal:
        mask = causal_mask(T, S, q.device)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S): q.k / sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.float().softmax(-1).nan_to_num(0.0).to(q.dtype)  # a query with every key masked: zeros
    return F.dropout(w, dropout_p) @ v if dropout_p else w @ v, w


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the context, every MultiHeadAttention in `model` takes the slow path and appends its
    weights (B, H, T, S), detached, to a list under its module name (e.g. "blocks.0.attn")."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for name, m in layers.items():
        m.recorded = maps[name]
    try:
        yield maps
    finally:
        for m in layers.values():
            m.recorded = None


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + mask) V over `n_heads` heads of width dim / n_heads.

    dim: model width (queries come from x of this width); context_dim: width of the keys/values
    source for cross-attention (defaults to dim).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 context_dim: int | None = None):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"attention width {dim} must be divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.out_dropout = nn.Dropout(dropout)
        self.recorded: list[torch.Tensor] | None = None  # set by record_attention: take the slow path

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                key_mask: torch.Tensor | None = None, causal: bool = False,
                cache: LayerCache | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> torch.Tensor:
        """x: (B, T, dim) queries. context: (B, S, context_dim) for cross-attention, else None.
        key_mask: (B, S_total) True at keys that may be attended (padding -> False).
        causal: each query sees only keys at or before its own position (self-attention only).
        cache: keys/values of earlier calls; appended to (self-attention) or filled once and
        reused (cross-attention). rope: (cos, sin) of the new positions, each (T, D), applied to
        queries and keys of self-attention. Returns (B, T, dim)."""
        B, T, C = x.shape
        q = self._heads(self.q(x))  # (B, H, T, D)
        if context is None:
            k, v = self.kv(x).chunk(2, dim=-1)
            k, v = self._heads(k), self._heads(v)  # (B, H, T, D) each
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H, T_past + T, D)
        else:
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                k, v = self.kv(context).chunk(2, dim=-1)
                k, v = self._heads(k), self._heads(v)  # (B, H, S, D)
                if cache is not None:
                    cache.append(k, v)
        t_k = k.shape[2]

        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
        is_causal = False
        if causal and context is None and T > 1:
            if mask is None and t_k == T:
                is_causal = True  # the fused kernels skip masked blocks outright
            else:
                c = causal_mask(T, t_k, x.device)[None, None]  # (1, 1, T, t_k)
                mask = c if mask is None else mask & c
        p = self.dropout if self.training else 0.0
        if self.recorded is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        else:
            y, weights = attention_with_weights(q, k, v, mask, is_causal, p)
            self.recorded.append(weights.detach())
        # A query whose every key is masked (an empty sequence) gets NaN from a softmax over -inf
        # alone; zero it so that NaN cannot spread through later sums.
        if mask is not None:
            y = y.nan_to_num(0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, dim)
        return self.out_dropout(self.out(y))
