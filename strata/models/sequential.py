"""A network written as a list of layers in the config, read top to bottom like Keras' Sequential.

    [model]
    name = "sequential"
    layers = [
      {kind = "conv2d", channels = 6, kernel = 5, padding = 2}, {kind = "tanh"},
      {kind = "avgpool2d", kernel = 2},
      {kind = "flatten"},
      {kind = "linear", features = 84}, {kind = "tanh"},
      {kind = "linear"},          # no features: as many outputs as the task needs
    ]

Nobody computes a flatten width: the model starts from the data set's example shape and builds one
layer at a time, running a zero example through each layer to learn the shape the next one receives.

The rules (shapes leave out the batch dimension):
- The input is the data set's `in_shape`: an image (C, H, W), a table row (F,), a window (T, F).
  Without one, token ids are a (T,) sequence (from `vocab_size`) and audio frames (T, in_features);
  such variable-length inputs are traced at T = 16 steps.
- conv1d and the 1d pools take (C, L); conv2d and the 2d pools take (C, H, W).
- linear takes (F,) or (T, F) and layernorm any shape, both acting on the last dimension;
  flatten turns any shape into (N,).
- `linear` without `features` gives `num_classes` outputs: the classes for classify, the numbers for
  regress. The model does not know its task, so a last layer of another width is the user's choice.
- batchnorm is BatchNorm1d for (F,) or (C, L) and BatchNorm2d for (C, H, W); batchnorm1d /
  batchnorm2d name one. groupnorm normalises groups of the channel dimension (dimension 0).
- embedding maps token ids to (T, dim) vectors, `vocab_size` from the data set.
- lstm / gru take (T, F); output = "last" gives the last layer's final state (D*hidden,), with D = 2
  when bidirectional, and "sequence" every step's output (T, D*hidden). Padded batches with lengths
  (sequence_classify) are packed, so padding never reaches the state.
- residual holds its own `layers` list: y = x + f(x), so f must return the shape it receives.
- An integer key is >= 1, except keys whose default is 0 (padding; features and a pool's stride,
  where 0 means "automatic").

Every layer table is checked when the config is loaded (known kind, known keys, types) and every
shape when the model is built, each error naming the layer's index, its kind and what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from strata.config import check, from_dict
from strata.errors import ConfigError
from strata.models import MODELS
from strata.registry import closest

TRACE_STEPS = 16  # the length a variable-length sequence is traced at

# ---------------------------------------------------------------------------------------------
# The keys of each kind of layer; `required` names those a layer table must give.


@dataclass(frozen=True)
class Conv:
    channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    required = ("channels", "kernel")


@dataclass(frozen=True)
class Pool:
    kernel: int = 0
    stride: int = 0  # 0: the kernel size (non-overlapping windows)
    padding: int = 0
    required = ("kernel",)


@dataclass(frozen=True)
class AdaptivePool:
    size: int = 1  # output length (1d) or side (2d)
    required = ()


@dataclass(frozen=True)
class Linear:
    features: int = 0  # 0: num_classes, the task's number of outputs
    bias: bool = True
    required = ()


@dataclass(frozen=True)
class GroupNorm:
    groups: int = 0
    required = ("groups",)


@dataclass(frozen=True)
class Dropout:
    p: float = 0.5
    required = ()


@dataclass(frozen=True)
class LeakyReLU:
    slope: float = 0.01
    required = ()


@dataclass(frozen=True)
class Embedding:
    dim: int = 0
    required = ("dim",)


@dataclass(frozen=True)
class Recurrent:
    hidden: int = 0
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between stacked layers
    output: Literal["last", "sequence"] = "last"
    required = ("hidden",)


@dataclass(frozen=True)
class Residual:
    layers: tuple[dict, ...] = ()
    required = ("layers",)


@dataclass(frozen=True)
class NoKeys:
    required = ()


# ---------------------------------------------------------------------------------------------
# Modules the plain torch ones do not cover


class LayerList(nn.ModuleList):
    """Runs its layers in order; recurrent layers (and residuals holding them) also get the lengths."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, lengths) if isinstance(layer, (LayerList, _RecurrentOutput)) else layer(x)
        return x


class ResidualBlock(LayerList):
    """y = x + f(x)"""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return x + super().forward(x, lengths)


class _RecurrentOutput:
    """nn.LSTM / nn.GRU returning one tensor: the last layer's final state or every step's output."""

    output = "last"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        T = x.size(1)  # x: (B, T, F)
        if lengths is not None:
            x = pack_padded_sequence(x, lengths.detach().cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, state = super().forward(x)
        if self.output == "sequence":
            if lengths is not None:
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
            return out  # (B, T, D*H)
        h = state[0] if isinstance(state, tuple) else state  # (layers*D, B, H); the LSTM's is (h, c)
        d = 2 if self.bidirectional else 1
        return torch.cat(list(h[-d:]), dim=-1)  # the last layer's directions: (B, D*H)


class LSTM(_RecurrentOutput, nn.LSTM):
    pass


class GRU(_RecurrentOutput, nn.GRU):
    pass


# ---------------------------------------------------------------------------------------------
# Builders: (spec, input shape without the batch, facts of the data) -> module.
# A builder that cannot take the shape raises Misfit with what it needs.


class Misfit(Exception):
    pass


def need(ok: bool, what: str) -> None:
    if not ok:
        raise Misfit(what)


def conv(spec, shape, facts, dims: int):
    need(len(shape) == dims + 1, "(C, L)" if dims == 1 else "(C, H, W)")
    fits_kernel(spec, shape[1:])
    need(shape[0] % spec.groups == 0 and spec.channels % spec.groups == 0,
         f"input channels ({shape[0]}) and channels ({spec.channels}) divisible by groups = {spec.groups}")
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(shape[0], spec.channels, spec.kernel, spec.stride, spec.padding, groups=spec.groups, bias=spec.bias)


def pool(spec, shape, facts, cls, dims: int):
    need(len(shape) == dims + 1, "(C, L)" if dims == 1 else "(C, H, W)")
    fits_kernel(spec, shape[1:])
    need(2 * spec.padding <= spec.kernel, f"padding at most half the kernel ({spec.kernel // 2})")
    return cls(spec.kernel, spec.stride or spec.kernel, spec.padding)


def fits_kernel(spec, sizes):
    # out = floor((n + 2 * padding - kernel) / stride) + 1 must be >= 1
    need(all(n + 2 * spec.padding >= spec.kernel for n in sizes),
         f"each spatial size >= kernel - 2 * padding = {spec.kernel - 2 * spec.padding}")


def adaptive(spec, shape, facts, cls, dims: int):
    need(len(shape) == dims + 1, "(C, L)" if dims == 1 else "(C, H, W)")
    return cls(spec.size)


def linear(spec, shape, facts):
    need(len(shape) in (1, 2), "(F,) or (T, F) (a flatten first?)")
    width = spec.features or facts["num_classes"]
    need(width >= 1, "features: the data set states no number of outputs, so give features")
    return nn.Linear(shape[-1], width, bias=spec.bias)


def batchnorm(spec, shape, facts, ranks=(1, 2, 3)):
    need(len(shape) in ranks, {(1, 2): "(F,) or (C, L)", (3,): "(C, H, W)"}.get(ranks, "(F,), (C, L) or (C, H, W)"))
    return (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0])


def groupnorm(spec, shape, facts):
    need(len(shape) >= 2 and shape[0] % spec.groups == 0, f"(C, ...) with C divisible by groups = {spec.groups}")
    return nn.GroupNorm(spec.groups, shape[0])


def embedding(spec, shape, facts):
    need(facts["ids"] and facts["vocab_size"] >= 1, "token ids (a text data set, which states vocab_size)")
    return nn.Embedding(facts["vocab_size"], spec.dim)


def recurrent(spec, shape, facts, cls):
    need(len(shape) == 2, "(T, F): a sequence of vectors (an embedding first, for token ids)")
    rnn = cls(shape[1], spec.hidden, spec.layers, batch_first=True, bidirectional=spec.bidirectional,
              dropout=spec.dropout if spec.layers > 1 else 0.0)
    rnn.output = spec.output
    return rnn


def residual(spec, shape, facts, where: str):
    body = build_layers(spec.layers, shape, facts, f"{where}.layers")
    out = tuple(trace(body, shape, facts).shape[1:])
    need(out == shape, f"its layers to return the shape they receive, {list(shape)}; they return {list(out)}")
    return ResidualBlock(body)


def simple(cls, **kwargs):
    return lambda spec, shape, facts: cls(**kwargs)


# kind -> (its keys, builder)
KINDS = {
    "conv1d": (Conv, lambda s, sh, f: conv(s, sh, f, 1)),
    "conv2d": (Conv, lambda s, sh, f: conv(s, sh, f, 2)),
    "linear": (Linear, linear),
    "maxpool1d": (Pool, lambda s, sh, f: pool(s, sh, f, nn.MaxPool1d, 1)),
    "maxpool2d": (Pool, lambda s, sh, f: pool(s, sh, f, nn.MaxPool2d, 2)),
    "avgpool1d": (Pool, lambda s, sh, f: pool(s, sh, f, nn.AvgPool1d, 1)),
    "avgpool2d": (Pool, lambda s, sh, f: pool(s, sh, f, nn.AvgPool2d, 2)),
    "adaptive_avgpool1d": (AdaptivePool, lambda s, sh, f: adaptive(s, sh, f, nn.AdaptiveAvgPool1d, 1)),
    "adaptive_avgpool2d": (AdaptivePool, lambda s, sh, f: adaptive(s, sh, f, nn.AdaptiveAvgPool2d, 2)),
    "adaptive_maxpool1d": (AdaptivePool, lambda s, sh, f: adaptive(s, sh, f, nn.AdaptiveMaxPool1d, 1)),
    "adaptive_maxpool2d": (AdaptivePool, lambda s, sh, f: adaptive(s, sh, f, nn.AdaptiveMaxPool2d, 2)),
    "batchnorm": (NoKeys, batchnorm),
    "batchnorm1d": (NoKeys, lambda s, sh, f: batchnorm(s, sh, f, (1, 2))),
    "batchnorm2d": (NoKeys, lambda s, sh, f: batchnorm(s, sh, f, (3,))),
    "layernorm": (NoKeys, lambda s, sh, f: nn.LayerNorm(sh[-1])),
    "groupnorm": (GroupNorm, groupnorm),
    "dropout": (Dropout, lambda s, sh, f: nn.Dropout(s.p)),
    "relu": (NoKeys, simple(nn.ReLU)),
    "gelu": (NoKeys, simple(nn.GELU)),
    "silu": (NoKeys, simple(nn.SiLU)),
    "tanh": (NoKeys, simple(nn.Tanh)),
    "sigmoid": (NoKeys, simple(nn.Sigmoid)),
    "leaky_relu": (LeakyReLU, lambda s, sh, f: nn.LeakyReLU(s.slope)),
    "softmax": (NoKeys, simple(nn.Softmax, dim=-1)),  # over the last dimension
    "flatten": (NoKeys, simple(nn.Flatten)),
    "embedding": (Embedding, embedding),
    "lstm": (Recurrent, lambda s, sh, f: recurrent(s, sh, f, LSTM)),
    "gru": (Recurrent, lambda s, sh, f: recurrent(s, sh, f, GRU)),
    "residual": (Residual, None),  # built by build_layers, which knows where it is
}


# ---------------------------------------------------------------------------------------------
# Parsing (at config load) and building (once the data's shapes are known)


def parse_layer(table: dict, where: str):
    """One layer table -> (kind, its typed keys). Unknown kinds and keys name the valid ones."""
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: every layer needs kind = \"...\", one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise ConfigError(f"{where}: layer kind '{kind}' is unknown{closest(kind, KINDS)}; "
                          f"kinds: {', '.join(KINDS)}")
    spec_cls = KINDS[kind][0]
    here = f"{where} ({kind})"
    keys = {k: v for k, v in table.items() if k != "kind"}
    if keys and spec_cls is NoKeys:
        raise ConfigError(f"{here}: unknown key '{next(iter(keys))}'; a {kind} layer takes no keys besides kind")
    spec = from_dict(spec_cls, keys, here)  # unknown keys and wrong types
    missing = [k for k in spec_cls.required if k not in keys]
    if missing:
        raise ConfigError(f"{here}: missing key '{missing[0]}'; a {kind} layer needs {', '.join(spec_cls.required)}")
    for f in fields(spec):
        v = getattr(spec, f.name)
        if f.name in ("p", "dropout"):
            check(0 <= v < 1, f"{here} {f.name}", f"must be in [0, 1), got {v}")
        elif type(v) is int:
            lo = 0 if f.default == 0 and f.name not in spec_cls.required else 1
            check(v >= lo, f"{here} {f.name}", f"must be >= {lo}, got {v}")
    if kind == "residual":
        parse_layers(spec.layers, f"{where}.layers")
    return kind, spec


def parse_layers(tables, where: str) -> list:
    check(len(tables) >= 1, where, "must hold at least one layer table, e.g. [{kind = \"linear\"}]")
    return [parse_layer(t, f"{where}[{i}]") for i, t in enumerate(tables)]


def trace(module: nn.Module, shape: tuple, facts: dict) -> torch.Tensor:
    """The module's output for a zero example of `shape` (token ids when the input is ids)."""
    x = torch.zeros(1, *shape, dtype=torch.long if facts["ids"] else torch.float32)
    was_training = module.training
    module.eval()  # batch norm cannot take a batch of one in training mode
    try:
        with torch.no_grad():
            return module(x)
    finally:
        module.train(was_training)


def build_layers(tables, shape: tuple, facts: dict, where: str) -> LayerList:
    layers = LayerList()
    facts = dict(facts)
    for i, table in enumerate(tables):
        kind, spec = parse_layer(table, f"{where}[{i}]")
        here = f"{where}[{i}] ({kind})"
        try:
            need(kind == "embedding" or not facts["ids"], "real values; token ids go through an embedding first")
            module = residual(spec, shape, facts, f"{where}[{i}]") if kind == "residual" \
                else KINDS[kind][1](spec, shape, facts)
            out = trace(module, shape, facts)
        except Misfit as e:
            raise ConfigError(f"{here}: received shape {list(shape)}, needs {e}") from None
        except (RuntimeError, ValueError) as e:  # what torch says about a shape the checks above let through
            raise ConfigError(f"{here}: received shape {list(shape)}: {str(e).splitlines()[0]}") from None
        layers.append(module)
        shape, facts["ids"] = tuple(out.shape[1:]), not out.is_floating_point()
    return layers


# ---------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class SequentialConfig:
    layers: tuple[dict, ...] = ()  # layer tables, in order
    in_shape: tuple[int, ...] = ()  # filled from the data set (one example, no batch)
    in_features: int = 0  # audio frames: (T, in_features) when the data set has no in_shape
    vocab_size: int = 0  # token ids: (T,) when the data set has no in_shape
    num_classes: int = 0  # what a linear without features outputs

    def __post_init__(self):
        parse_layers(self.layers, "[model] layers")


@MODELS.register("sequential")
class Sequential(nn.Module):
    Config = SequentialConfig

    def __init__(self, cfg: SequentialConfig):
        super().__init__()
        self.cfg = cfg
        ids = not cfg.in_shape and cfg.vocab_size > 0
        if cfg.in_shape:
            shape = tuple(cfg.in_shape)
        elif ids:
            shape = (TRACE_STEPS,)  # (T,) token ids
        elif cfg.in_features:
            shape = (TRACE_STEPS, cfg.in_features)  # (T, F) frames
        else:
            raise ConfigError("[model] sequential: the data set states no input shape (in_shape, vocab_size or "
                              "in_features), so the first layer's input is unknown; give [model] in_shape")
        facts = {"ids": ids, "vocab_size": cfg.vocab_size, "num_classes": cfg.num_classes}
        self.layers = build_layers(cfg.layers, shape, facts, "[model] layers")
        self.out_shape = tuple(trace(self.layers, shape, facts).shape[1:])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(x, lengths)  # (B, *in_shape) -> (B, *out_shape)


# Presets for 1x28x28 inputs, 10 classes: name -> (layers, parameters)
LENET5 = (
    {"kind": "conv2d", "channels": 6, "kernel": 5, "padding": 2}, {"kind": "tanh"},  # C1: (6, 28, 28)
    {"kind": "avgpool2d", "kernel": 2},  # S2: (6, 14, 14)
    {"kind": "conv2d", "channels": 16, "kernel": 5}, {"kind": "tanh"},  # C3: (16, 10, 10)
    {"kind": "avgpool2d", "kernel": 2},  # S4: (16, 5, 5)
    {"kind": "conv2d", "channels": 120, "kernel": 5}, {"kind": "tanh"},  # C5: (120, 1, 1)
    {"kind": "flatten"},  # (120,)
    {"kind": "linear", "features": 84}, {"kind": "tanh"},  # F6
    {"kind": "linear"},  # (10,)
)
PRESETS = {
    "lenet5": (LENET5, 61_706),
}
