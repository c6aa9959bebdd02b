"""Transformers (Vaswani et al. 2017, "Attention Is All You Need") in three shapes:

- `gpt`: decoder-only language model (Radford et al. 2019, GPT-2) with pre-norm blocks, learned or
  rotary positions (Su et al. 2021), input and output embeddings tied (Press & Wolf 2017) and
  nanoGPT's initialisation (N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)).
- `transformer_classifier`: encoder over a padded batch, pooled (mean over real tokens, or a
  learned [CLS] token as in BERT, Devlin et al. 2019) into class logits.
- `transformer_seq2seq`: encoder-decoder with cross-attention for translation, decoded greedily,
  by sampling, or by beam search; all of them with a KV cache.

Model protocols
- gpt: `logits, cache = model(tokens, state=None)` and `model.context_size`, the protocol of
  strata.nn.sampling.generate_tokens (feed the returned cache back with only the new tokens).
- transformer_classifier: `logits = model(tokens, lengths)`.
- transformer_seq2seq: `logits = model(src, src_lengths, tgt_in)` for teacher forcing;
  `model.generate(...)` and `model.beam_search(...)` return token-id lists without bos/eos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS
from strata.nn.attention import KVCache, LayerCache, MultiHeadAttention, padding_mask
from strata.nn.feedforward import FeedForward
from strata.nn.rotary import rotary_tables
from strata.nn.sampling import sample_next

# ---------------------------------------------------------------------------------------------
# Blocks


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 / Xiong et al. 2020): x + attn(ln(x)) [+ cross(ln(x), memory)]
    + mlp(ln(x)). Pre-norm keeps the residual path an identity, so deep stacks train without warm-up
    tricks."""

    def __init__(self, dim: int, n_head: int, mlp_ratio: int, dropout: float, bias: bool, cross: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = MultiHeadAttention(dim, n_head, dropout, bias)
        self.ln_cross = nn.LayerNorm(dim, bias=bias) if cross else None
        self.cross = MultiHeadAttention(dim, n_head, dropout, bias) if cross else None
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = FeedForward(dim, mlp_ratio * dim, dropout, bias)

    def forward(self, x, *, causal: bool, key_mask=None, rope=None, cache: LayerCache | None = None,
                memory=None, memory_mask=None, cross_cache: LayerCache | None = None):
        x = x + self.attn(self.ln1(x), key_mask=key_mask, causal=causal, cache=cache, rope=rope)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), memory, key_mask=memory_mask, cache=cross_cache)
        return x + self.mlp(self.ln2(x))


class Positions(nn.Module):
    """Learned absolute position embeddings added to the input, or rotary tables handed to attention."""

    def __init__(self, kind: str, context_size: int, dim: int, n_head: int):
        super().__init__()
        self.kind = kind
        self.context_size = context_size
        if kind == "learned":
            self.table = nn.Embedding(context_size, dim)
        else:
            cos, sin = rotary_tables(dim // n_head, context_size)
            self.register_buffer("cos", cos, persistent=False)  # (T_max, D)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0):
        """x: (B, T, C) embeddings of positions start..start+T-1 -> (x with positions, rope or None)."""
        T = x.shape[1]
        if start + T > self.context_size:
            raise ValueError(f"positions {start}..{start + T - 1} exceed the context size {self.context_size}")
        if self.kind == "learned":
            return x + self.table(torch.arange(start, start + T, device=x.device)), None
        return x, (self.cos[start:start + T], self.sin[start:start + T])


def init_weights(model: nn.Module, n_layer: int) -> None:
    """nanoGPT / GPT-2 init: N(0, 0.02) for linear and embedding weights, zero biases, and the
    projections that write into the residual stream scaled by 1/sqrt(2 * n_layer) so the stream's
    variance does not grow with depth."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
    for name, p in model.named_parameters():
        if name.endswith("attn.out.weight") or name.endswith("cross.out.weight") or name.endswith("mlp.down.weight"):
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))


def _require_from_data(cfg, **minimum) -> None:
    """Sizes the data fills in (vocab_size, num_classes) are only known when the model is built."""
    for key, low in minimum.items():
        value = getattr(cfg, key)
        check(value >= low, f"[model] {key}", f"must be >= {low} (normally filled in from the data set), got {value}")


def _resolve_preset(cfg, presets: dict, defaults: dict, model: str) -> None:
    """Fill n_layer / n_head / dim of a frozen config from `preset`, or from `defaults`."""
    shape = ("n_layer", "n_head", "dim")
    if cfg.preset:
        check(cfg.preset in presets, "[model] preset",
              f"unknown preset '{cfg.preset}' for {model}; known: {', '.join(presets)}")
        # a value equal to the preset's is the preset itself, filled in by an earlier check of this config
        given = [k for k in shape if getattr(cfg, k) not in (None, presets[cfg.preset][k])]
        check(not given, "[model] preset", f"sets {', '.join(shape)}; remove {', '.join(given)} or the preset")
        values = presets[cfg.preset]
    else:
        values = defaults
    for k in shape:
        if getattr(cfg, k) is None:
            object.__setattr__(cfg, k, values[k])
    check(1 <= cfg.n_layer <= 1000, "[model] n_layer", f"must be in [1, 1000], got {cfg.n_layer}")
    check(cfg.n_head >= 1 and cfg.dim % cfg.n_head == 0, "[model] dim",
          f"must be a multiple of n_head ({cfg.n_head}), got {cfg.dim}")
    if cfg.positions == "rotary":
        check((cfg.dim // cfg.n_head) % 2 == 0, "[model] positions",
              f"rotary needs an even head width, got dim / n_head = {cfg.dim // cfg.n_head}")
    check(0 <= cfg.dropout < 1, "[model] dropout", f"must be in [0, 1), got {cfg.dropout}")


# ---------------------------------------------------------------------------------------------
# GPT: decoder-only language model


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 0  # filled from the data
    context_size: int = 256  # the longest sequence seen at once (nanoGPT's block_size)
    preset: str = ""  # a row of GPT_PRESETS; sets n_layer, n_head, dim
    n_layer: int | None = None  # default 6
    n_head: int | None = None  # default 6
    dim: int | None = None  # default 384
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = False  # nanoGPT: no biases in linear layers and layer norms, a little better and faster
    positions: Literal["learned", "rotary"] = "learned"
    tie_weights: bool = True

    def __post_init__(self):
        check(self.context_size >= 1, "[model] context_size", f"must be >= 1, got {self.context_size}")
        _resolve_preset(self, GPT_PRESETS, {"n_layer": 6, "n_head": 6, "dim": 384}, "gpt")


@MODELS.register("gpt")
class GPT(nn.Module):
    Config = GPTConfig

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        _require_from_data(cfg, vocab_size=1)
        self.cfg = cfg
        self.context_size = cfg.context_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positions = Positions(cfg.positions, cfg.context_size, cfg.dim, cfg.n_head)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_head, cfg.mlp_ratio, cfg.dropout, cfg.bias)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """tokens: (B, T) ids of the positions after those in `state` -> (logits (B, T, V), state)."""
        if state is None:
            state = KVCache(len(self.blocks))
        x, rope = self.positions(self.embed(tokens), start=len(state))  # (B, T, C)
        x = self.dropout(x)
        for block, cache in zip(self.blocks, state.self_attn):
            x = block(x, causal=True, rope=rope, cache=cache)
        return self.head(self.ln_f(x)), state  # (B, T, V)


# name: (n_layer, n_head, dim). Parameter counts with tied embeddings, vocab 65 (shakespeare-char),
# context 256, no biases, learned positions (`num_params` below recomputes them).
GPT_PRESETS = {
    "gpt-nano": {"n_layer": 3, "n_head": 3, "dim": 48},  # 0.10 M
    "gpt-micro": {"n_layer": 4, "n_head": 4, "dim": 128},  # 0.83 M
    "gpt-mini": {"n_layer": 6, "n_head": 6, "dim": 192},  # 2.72 M
    "shakespeare-char": {"n_layer": 6, "n_head": 6, "dim": 384},  # 10.75 M (nanoGPT's shakespeare_char)
    "gpt2": {"n_layer": 12, "n_head": 12, "dim": 768},  # 124 M with vocab 50257, context 1024
}


# ---------------------------------------------------------------------------------------------
# Encoder classifier


@dataclass(frozen=True)
class ClassifierConfig:
    vocab_size: int = 0  # filled from the data
    num_classes: int = 0  # filled from the data
    context_size: int = 256  # longer inputs are cut to this many tokens
    preset: str = ""  # a row of ENCODER_PRESETS; sets n_layer, n_head, dim
    n_layer: int | None = None  # default 2
    n_head: int | None = None  # default 4
    dim: int | None = None  # default 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    bias: bool = True
    positions: Literal["learned", "rotary"] = "learned"
    pooling: Literal["mean", "cls"] = "mean"

    def __post_init__(self):
        check(self.context_size >= 1, "[model] context_size", f"must be >= 1, got {self.context_size}")
        _resolve_preset(self, ENCODER_PRESETS, {"n_layer": 2, "n_head": 4, "dim": 128}, "transformer_classifier")


@MODELS.register("transformer_classifier")
class TransformerClassifier(nn.Module):
    Config = ClassifierConfig

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        _require_from_data(cfg, vocab_size=1, num_classes=2)
        self.cfg = cfg
        extra = 1 if cfg.pooling == "cls" else 0
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if extra else None
        self.positions = Positions(cfg.positions, cfg.context_size + extra, cfg.dim, cfg.n_head)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_head, cfg.mlp_ratio, cfg.dropout, cfg.bias)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        init_weights(self, cfg.n_layer)
        if self.cls is not None:
            nn.init.normal_(self.cls, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, T) right-padded ids; lengths: (B,) real tokens per row (None: no padding)
        -> logits (B, num_classes)."""
        B = tokens.shape[0]
        tokens = tokens[:, : self.cfg.context_size]
        T = tokens.shape[1]
        if lengths is None:
            lengths = torch.full((B,), T, device=tokens.device)
        lengths = lengths.clamp(max=T)
        x = self.embed(tokens)  # (B, T, C)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # (B, 1 + T, C)
            lengths = lengths + 1
        x, rope = self.positions(x)
        x = self.dropout(x)
        keep = padding_mask(lengths, x.shape[1])  # (B, T'): True at real tokens
        for block in self.blocks:
            x = block(x, causal=False, key_mask=keep, rope=rope)
        x = self.ln_f(x)
        if self.cls is not None:
            pooled = x[:, 0]  # (B, C)
        else:
            w = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)  # mean over real tokens, (B, C)
        return self.head(pooled)


# name: (n_layer, n_head, dim). Parameter counts with vocab 8000, 2 classes, context 256.
ENCODER_PRESETS = {
    "encoder-tiny": {"n_layer": 2, "n_head": 4, "dim": 128},  # 1.45 M
    "encoder-small": {"n_layer": 4, "n_head": 4, "dim": 256},  # 5.27 M
    "encoder-base": {"n_layer": 6, "n_head": 8, "dim": 512},  # 23.1 M
}


# ---------------------------------------------------------------------------------------------
# Encoder-decoder for translation


@dataclass(frozen=True)
class Seq2SeqConfig:
    src_vocab_size: int = 0  # filled from the data
    tgt_vocab_size: int = 0  # filled from the data
    context_size: int = 128  # longest source and longest target, in tokens
    preset: str = ""  # a row of SEQ2SEQ_PRESETS; sets n_layer, n_head, dim
    n_layer: int | None = None  # encoder and decoder layers each; default 3
    n_head: int | None = None  # default 4
    dim: int | None = None  # default 256
    mlp_ratio: int = 4
    dropout: float = 0.1
    bias: bool = True
    positions: Literal["learned", "rotary"] = "learned"
    tie_weights: bool = True  # decoder input embedding = output projection
    share_embeddings: bool = False  # encoder and decoder share one embedding (needs one shared vocabulary)

    def __post_init__(self):
        check(not self.share_embeddings or self.src_vocab_size == self.tgt_vocab_size, "[model] share_embeddings",
              f"needs one vocabulary for both sides, got {self.src_vocab_size} and {self.tgt_vocab_size} "
              "(set [data] shared_vocab = true or share_embeddings = false)")
        _resolve_preset(self, SEQ2SEQ_PRESETS, {"n_layer": 3, "n_head": 4, "dim": 256}, "transformer_seq2seq")


@MODELS.register("transformer_seq2seq")
class TransformerSeq2Seq(nn.Module):
    Config = Seq2SeqConfig

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        _require_from_data(cfg, src_vocab_size=1, tgt_vocab_size=1)
        self.cfg = cfg
        self.context_size = cfg.context_size
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.dim)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, cfg.dim)
        self.src_positions = Positions(cfg.positions, cfg.context_size, cfg.dim, cfg.n_head)
        self.tgt_positions = Positions(cfg.positions, cfg.context_size, cfg.dim, cfg.n_head)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(Block(cfg.dim, cfg.n_head, cfg.mlp_ratio, cfg.dropout, cfg.bias)
                                     for _ in range(cfg.n_layer))
        self.ln_enc = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.decoder = nn.ModuleList(Block(cfg.dim, cfg.n_head, cfg.mlp_ratio, cfg.dropout, cfg.bias, cross=True)
                                     for _ in range(cfg.n_layer))
        self.ln_dec = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.head = nn.Linear(cfg.dim, cfg.tgt_vocab_size, bias=False)
        init_weights(self, 2 * cfg.n_layer)
        if cfg.tie_weights:
            self.head.weight = self.tgt_embed.weight

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src: (B, S) right-padded ids -> memory (B, S, C) and its key mask (B, S), True at real tokens."""
        src = src[:, : self.context_size]
        keep = padding_mask(src_lengths.clamp(max=src.shape[1]), src.shape[1])
        x, rope = self.src_positions(self.src_embed(src))
        x = self.dropout(x)
        for block in self.encoder:
            x = block(x, causal=False, key_mask=keep, rope=rope)
        return self.ln_enc(x), keep

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
               cache: KVCache | None = None) -> torch.Tensor:
        """tgt: (B, T) target ids after the len(cache) already decoded -> logits (B, T, V)."""
        x, rope = self.tgt_positions(self.tgt_embed(tgt), start=0 if cache is None else len(cache))
        x = self.dropout(x)
        for i, block in enumerate(self.decoder):
            x = block(x, causal=True, rope=rope, memory=memory, memory_mask=memory_mask,
                      cache=None if cache is None else cache.self_attn[i],
                      cross_cache=None if cache is None else cache.cross_attn[i])
        return self.head(self.ln_dec(x))

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tgt_in (B, T) = bos + target[:-1] -> logits (B, T, V) for target."""
        memory, keep = self.encode(src, src_lengths)
        return self.decode(tgt_in, memory, keep)

    # --- decoding ---------------------------------------------------------------------------
    def _max_steps(self, max_len: int) -> int:
        return max(1, min(max_len, self.context_size))

    @torch.no_grad()
    def generate(self, src, src_lengths, bos_id: int, eos_id: int, max_len: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> list[list[int]]:
        """One output per source, greedy (temperature 0) or sampled; ids without bos and eos."""
        memory, keep = self.encode(src, src_lengths)
        B = src.shape[0]
        out = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        cache = KVCache(len(self.decoder), cross=True) if use_cache else None
        for _ in range(self._max_steps(max_len)):
            feed = out[:, -1:] if use_cache else out
            logits = self.decode(feed, memory, keep, cache)[:, -1]  # (B, V)
            nxt = sample_next(logits, temperature, top_k, top_p, generator).masked_fill(done, eos_id)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return [_strip(row, eos_id) for row in out[:, 1:].tolist()]

    @torch.no_grad()
    def beam_search(self, src, src_lengths, bos_id: int, eos_id: int, beam_size: int = 4, max_len: int = 64,
                    length_penalty: float = 1.0) -> list[list[int]]:
        """Best of `beam_size` hypotheses per source by log-probability / length^length_penalty;
        ids without bos and eos. A source is finished once it holds beam_size ended hypotheses."""
        K = beam_size
        memory, keep = self.encode(src, src_lengths)
        B, S, C = memory.shape
        memory = memory[:, None].expand(B, K, S, C).reshape(B * K, S, C)  # (B*K, S, C): beam-major per source
        keep = keep[:, None].expand(B, K, S).reshape(B * K, S)
        cache = KVCache(len(self.decoder), cross=True)
        tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=src.device)
        # Only beam 0 is live at the start, so the K beams do not all repeat the same first token.
        scores = torch.full((B, K), float("-inf"), device=src.device)
        scores[:, 0] = 0.0
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        active = [True] * B

        def penalised(score: float, length: int) -> float:
            return score / max(length, 1) ** length_penalty

        steps = self._max_steps(max_len)
        for step in range(steps):
            logp = self.decode(tokens[:, -1:], memory, keep, cache)[:, -1].float().log_softmax(-1)  # (B*K, V)
            V = logp.shape[-1]
            cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
            top_scores, top_idx = cand.topk(2 * K, dim=-1)  # (B, 2K): enough to find K that do not end
            parents = torch.zeros(B, K, dtype=torch.long)  # dead beams (score -inf) point at beam 0
            next_tok = torch.full((B, K), eos_id, dtype=torch.long)
            next_scores = torch.full((B, K), float("-inf"))
            last = step == steps - 1
            ts, ti = top_scores.tolist(), top_idx.tolist()
            for b in range(B):
                n = 0
                for rank, (s, idx) in enumerate(zip(ts[b], ti[b])):
                    if s == float("-inf"):
                        break
                    beam, tok = divmod(idx, V)
                    ends = tok == eos_id
                    if ends or last:
                        # an ending outside the top K would not have been kept by a K-wide beam
                        if (ends and rank >= K) or not active[b] or len(finished[b]) >= K:
                            continue
                        hyp = tokens[b * K + beam, 1:].tolist() + ([] if ends else [tok])
                        finished[b].append((penalised(s, len(hyp) + int(ends)), hyp))
                    elif n < K:
                        parents[b, n], next_tok[b, n], next_scores[b, n] = beam, tok, s
                        n += 1
                if len(finished[b]) >= K:
                    active[b] = False
                if not active[b]:
                    next_scores[b] = float("-inf")
            if not any(active):
                break
            rows = (torch.arange(B)[:, None] * K + parents).view(-1).to(src.device)  # (B*K,)
            cache.reorder(rows)
            tokens = torch.cat([tokens[rows], next_tok.view(-1, 1).to(src.device)], dim=1)
            scores = next_scores.to(src.device)
        return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


def _strip(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


# name: (n_layer each side, n_head, dim). Parameter counts with one shared 8000 vocabulary, tied
# decoder embeddings, separate encoder embedding, context 128.
SEQ2SEQ_PRESETS = {
    "seq2seq-tiny": {"n_layer": 2, "n_head": 4, "dim": 128},  # 3.0 M
    "seq2seq-small": {"n_layer": 3, "n_head": 4, "dim": 256},  # 9.7 M
    "seq2seq-base": {"n_layer": 6, "n_head": 8, "dim": 512},  # 52.5 M (Vaswani et al.'s base: 65 M with 37k vocab)
}


def num_params(model: nn.Module) -> int:
    """Parameters counted once, tied weights included once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
