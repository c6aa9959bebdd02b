"""Recurrent networks: the Elman RNN, the LSTM (Hochreiter & Schmidhuber 1997, "Long Short-Term
Memory", with the forget gate of Gers et al. 2000) and the GRU (Cho et al. 2014, "Learning Phrase
Representations using RNN Encoder-Decoder"), on torch.nn.RNN / LSTM / GRU (cuDNN on a GPU).

Two models share one encoder:
- "rnn_classifier": token ids (B, T) or feature frames (B, T, F) plus their lengths -> class
  logits (B, C). Padded batches are packed (`pack_padded_sequence`), so padding never reaches the
  recurrence and the result for a sequence does not depend on what it was batched with. The
  sequence is summarised by the last hidden state (for a bidirectional net: the forward
  direction's state at the last valid step and the backward direction's at the first), or by the
  mean / max of the outputs over valid steps.
- "rnn_lm": a recurrent language model (Zaremba et al. 2014, "Recurrent Neural Network
  Regularization": dropout on embeddings, between layers and before the decoder), optionally with
  the output layer tied to the embedding (Press & Wolf 2017, "Using the Output Embedding to
  Improve Language Models"). `forward(tokens, state)` -> (logits, state) is the protocol of
  strata.nn.sampling.generate_tokens: generation feeds one token at a time, carrying (h, c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from strata.config import check
from strata.models import MODELS

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


# ---------------------------------------------------------------------------------------------
# Blocks


class InputProjection(nn.Module):
    """Token ids -> embeddings, or feature frames -> a linear projection (identity when embed_dim=0)."""

    def __init__(self, vocab_size: int, in_features: int, embed_dim: int, pad_id: int = 0):
        super().__init__()
        self.tokens = vocab_size > 0
        if self.tokens:
            self.proj = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
            self.out_dim = embed_dim
        elif embed_dim > 0:
            self.proj = nn.Linear(in_features, embed_dim)
            self.out_dim = embed_dim
        else:
            self.proj = nn.Identity()
            self.out_dim = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.long() if self.tokens else x.float())  # (B, T, E)


class Recurrent(nn.Module):
    """A stacked, optionally bidirectional torch RNN over batch-first sequences.

    With `lengths` the batch is packed, so step t of a sequence shorter than t is never computed,
    the outputs there are 0 and the returned state is each sequence's state at its own last step.
    """

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        self.cell, self.layers, self.directions = cell, layers, 2 if bidirectional else 1
        self.rnn = CELLS[cell](input_size, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        if cell == "lstm":
            # Forget-gate bias 1 (Jozefowicz et al. 2015): remember by default early in training.
            # torch orders the gates (input, forget, cell, output), and adds b_ih + b_hh.
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[hidden:2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state=None):
        """x: (B, T, E) -> outputs (B, T, D*H), state ((layers*D, B, H), or a pair for an LSTM)."""
        if lengths is None:
            return self.rnn(x, state)
        packed = pack_padded_sequence(x, lengths.detach().cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, D*H)
        return out, state

    def last_hidden(self, state) -> torch.Tensor:
        """The top layer's final hidden state, directions concatenated: (B, D*H)."""
        h = state[0] if self.cell == "lstm" else state  # (layers*D, B, H)
        h = h.view(self.layers, self.directions, h.size(1), h.size(2))[-1]  # (D, B, H)
        return h.transpose(0, 1).reshape(h.size(1), -1)  # (B, D*H)


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) boolean, True at steps t < length."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------------------------
# Sequence classifier


@dataclass(frozen=True)
class ClassifierConfig:
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # on the inputs, between layers and before the head
    embed_dim: int = 128  # token embedding / frame projection width; 0 feeds frames as they are
    vocab_size: int = 0  # > 0: inputs are token ids (filled in from the data)
    in_features: int = 0  # > 0: inputs are feature frames (B, T, F) (filled in from the data)
    num_classes: int = 0  # filled in from the data
    pool: Literal["last", "mean", "max"] = "last"
    pad_id: int = 0

    def __post_init__(self):
        check(self.hidden >= 1, "[model] hidden", f"must be >= 1, got {self.hidden}")
        check(1 <= self.layers <= 1000, "[model] layers", f"must be in [1, 1000], got {self.layers}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.embed_dim >= 0, "[model] embed_dim", f"must be >= 0, got {self.embed_dim}")
        check(self.vocab_size == 0 or self.embed_dim > 0, "[model] embed_dim", "must be > 0 for token inputs")
        # vocab_size, in_features and num_classes may still be 0 here: the data fills them in, and
        # the model checks them when it is built


def check_data_facts(cfg: ClassifierConfig) -> None:
    check((cfg.vocab_size > 0) != (cfg.in_features > 0), "[model] vocab_size / in_features",
          f"exactly one must be > 0 (token ids or feature frames), got vocab_size={cfg.vocab_size}, "
          f"in_features={cfg.in_features}; leave both out to take them from the data")
    check(cfg.num_classes >= 1, "[model] num_classes", f"must be >= 1 (classes, or numbers to regress), "
          f"got {cfg.num_classes}")


@MODELS.register("rnn_classifier")
class RNNClassifier(nn.Module):
    """(inputs (B, T) ids or (B, T, F) frames, lengths (B,)) -> logits (B, num_classes), or with the
    regress task num_classes numbers (a forecast's hours, for one)."""

    Config = ClassifierConfig

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        check_data_facts(cfg)
        self.cfg = cfg
        self.inputs = InputProjection(cfg.vocab_size, cfg.in_features, cfg.embed_dim, cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Recurrent(cfg.cell, self.inputs.out_dim, cfg.hidden, cfg.layers, cfg.bidirectional, cfg.dropout)
        width = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Linear(width, cfg.num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
        lengths = lengths.clamp(min=1, max=T)
        h = self.drop(self.inputs(x))  # (B, T, E)
        out, state = self.encoder(h, lengths)  # (B, T, D*H)
        if self.cfg.pool == "last":
            z = self.encoder.last_hidden(state)  # (B, D*H)
        else:
            mask = valid_mask(lengths, T)[..., None]  # (B, T, 1)
            if self.cfg.pool == "mean":
                z = (out * mask).sum(1) / lengths[:, None].to(out.dtype)
            else:
                z = out.masked_fill(~mask, float("-inf")).amax(1)
        return self.head(self.drop(z))

    def for_export(self) -> "RNNClassifier":
        """A copy computing the same function without packed sequences (Unpacked, below), for export."""
        import copy

        twin = copy.deepcopy(self).eval()
        twin.encoder = Unpacked(self.encoder)
        return twin


# ---------------------------------------------------------------------------------------------
# Language model


@dataclass(frozen=True)
class LMConfig:
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.2  # embeddings, between layers, before the decoder
    embed_dim: int = 0  # 0: same as hidden
    vocab_size: int = 0  # filled in from the data
    tie_weights: bool = False  # decoder shares the embedding matrix (a projection is added if widths differ)

    def __post_init__(self):
        check(self.hidden >= 1, "[model] hidden", f"must be >= 1, got {self.hidden}")
        check(1 <= self.layers <= 1000, "[model] layers", f"must be in [1, 1000], got {self.layers}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.embed_dim >= 0, "[model] embed_dim", f"must be >= 0, got {self.embed_dim}")


@MODELS.register("rnn_lm")
class RNNLanguageModel(nn.Module):
    """tokens (B, T) -> next-token logits (B, T, V), carrying the recurrent state between calls."""

    Config = LMConfig
    context_size = None  # the state carries an unbounded past

    def __init__(self, cfg: LMConfig):
        super().__init__()
        check(cfg.vocab_size >= 2, "[model] vocab_size", f"must be >= 2 (it comes from the data's tokenizer), "
              f"got {cfg.vocab_size}")
        self.cfg = cfg
        E = cfg.embed_dim or cfg.hidden
        self.embed = nn.Embedding(cfg.vocab_size, E)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Recurrent(cfg.cell, E, cfg.hidden, cfg.layers, False, cfg.dropout)
        self.proj = nn.Linear(cfg.hidden, E, bias=False) if cfg.tie_weights and E != cfg.hidden else nn.Identity()
        self.decoder = nn.Linear(E if cfg.tie_weights else cfg.hidden, cfg.vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02 if cfg.tie_weights else 1.0)
        if cfg.tie_weights:
            self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, state=None):
        """tokens (B, T) -> (logits (B, T, V), state); pass `state` back to continue the sequence."""
        h = self.drop(self.embed(tokens.long()))  # (B, T, E)
        out, state = self.encoder(h, None, state)  # (B, T, H)
        return self.decoder(self.proj(self.drop(out))), state

    def for_export(self) -> "RNNLanguageModel":
        """A copy computing the same logits from a zero state with the Unpacked encoder (below), whose
        loop the exporters keep over a free length (an Elman cell they would unroll)."""
        import copy

        twin = copy.deepcopy(self).eval()
        twin.encoder = Unpacked(self.encoder)
        return twin


# ---------------------------------------------------------------------------------------------
# Presets (parameter counts for the vocabularies named)

PRESETS = {
    # name: (model, config, parameters)
    "char-lstm-2x512": ("rnn_lm", LMConfig(hidden=512, layers=2, dropout=0.2, vocab_size=69), 4_273_221),
    "char-lstm-3x512": ("rnn_lm", LMConfig(hidden=512, layers=3, dropout=0.2, vocab_size=69), 6_374_469),
    "fsdd-gru-2x128": ("rnn_classifier", ClassifierConfig(cell="gru", hidden=128, layers=2, bidirectional=True,
                                                          embed_dim=0, in_features=40, num_classes=10), 429_578),
    "sst2-bilstm": ("rnn_classifier", ClassifierConfig(cell="lstm", hidden=256, layers=1, bidirectional=True,
                                                       embed_dim=256, vocab_size=8000, num_classes=2,
                                                       pool="max"), 3_101_698),
}


# ---------------------------------------------------------------------------------------------
# Export


def _single(cell: str, weights: dict, hidden: int) -> nn.Module:
    """A one-layer, one-direction torch cell holding the given weights."""
    one = CELLS[cell](weights["weight_ih"].shape[1], hidden, batch_first=True, bias=weights["bias_ih"] is not None)
    with torch.no_grad():
        for name, w in weights.items():
            if w is not None:
                getattr(one, f"{name}_l0").copy_(w)
    return one


def elman_as_gru(cell: str, weights: dict, hidden: int) -> nn.GRU:
    """An Elman cell h' = tanh(W x + b + U h + c) as a GRU whose reset gate is open and update gate
    shut: h' = (1 - z) n + z h, n = tanh(W_n x + b_n + r (U_n h + c_n)), with r = sigmoid(100) = 1 and
    z = sigmoid(-100) < 1e-43 in float32. The exporters keep a GRU's loop over a free length (an
    Elman cell they unroll)."""
    gru = nn.GRU(weights["weight_ih"].shape[1], hidden, batch_first=True)  # gates in the order r, z, n
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.weight_ih_l0[2 * hidden:] = weights["weight_ih"]
        gru.weight_hh_l0[2 * hidden:] = weights["weight_hh"]
        gru.bias_ih_l0[:hidden], gru.bias_ih_l0[hidden:2 * hidden] = 100.0, -100.0
        if weights["bias_ih"] is not None:
            gru.bias_ih_l0[2 * hidden:] = weights["bias_ih"]
            gru.bias_hh_l0[2 * hidden:] = weights["bias_hh"]
    return gru


class Unpacked(nn.Module):
    """The function of a Recurrent called with lengths, without packed sequences (which ONNX and
    torch.export cannot hold): one single-layer cell per layer and direction, holding the trained
    weights. The forward direction runs over the padded batch (padding comes after each sequence, so
    it never reaches a valid step); the backward direction runs over each sequence reversed within
    its own length. Outputs at padding are 0 and the state is each sequence's at its own last step,
    as with packing."""

    def __init__(self, rec: Recurrent):
        super().__init__()
        self.cell, self.layers, self.directions = rec.cell, rec.layers, rec.directions
        r = rec.rnn
        self.cells = nn.ModuleList()
        for layer in range(self.layers):
            for suffix in ("", "_reverse")[: self.directions]:
                weights = {name: getattr(r, f"{name}_l{layer}{suffix}", None)
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                make = elman_as_gru if self.cell == "rnn" else _single
                self.cells.append(make(self.cell, weights, r.hidden_size))

    last_hidden = Recurrent.last_hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state=None):
        """x: (B, T, E), lengths (B,) in 1..T (None: all T) -> outputs (B, T, D*H) (0 at padding), state
        as Recurrent's (an LSTM's cell state is not computed: None). Starts from a zero state only."""
        if state is not None:
            raise ValueError("the export form of a recurrent net starts from a zero state")
        B, T = x.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
        rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
        t = torch.arange(T, device=x.device)[None, :]  # (1, T)
        last = lengths[:, None] - 1  # (B, 1)
        mask = (t <= last)[..., None]  # (B, T, 1)
        flip = torch.where(t <= last, last - t, t)  # (B, T): step t of the reversed sequence; an involution
        finals = []
        for layer in range(self.layers):
            outs = []
            for d in range(self.directions):
                cell = self.cells[layer * self.directions + d]
                out = cell(x if d == 0 else x[rows, flip])[0]  # (B, T, H)
                finals.append(out[rows[:, 0], last[:, 0]])  # (B, H): the state after the last valid step
                outs.append(out if d == 0 else out[rows, flip])
            x = torch.cat(outs, dim=2) * mask  # (B, T, D*H)
        h = torch.stack(finals)  # (layers*D, B, H)
        return x, ((h, None) if self.cell == "lstm" else h)
