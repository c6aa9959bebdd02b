"""Autoencoders: an encoder squeezes the input into a small code, a decoder rebuilds the input from it.

- MLP: Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural Networks",
  Science 2006 (trained end to end here, without the RBM pretraining).
- Convolutional: Masci et al., "Stacked Convolutional Auto-Encoders for Hierarchical Feature
  Extraction", ICANN 2011; stride-2 convolutions down, transposed convolutions up.
- Denoising (Vincent et al., ICML 2008) corrupts the input and asks for the clean one: that is a
  choice of the `reconstruct` task (its `noise` key), not of the model.

The decoder returns unbounded values: the task reads them as logits (binary cross-entropy on images
in [0, 1]) or as the reconstruction itself (squared error, e.g. on standardised tabular features).
`.encoder` maps x -> (B, latent) and has `.out_features`, so a classifier can be built on it
(see strata/models/pretrained.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS


# ---------------------------------------------------------------------------------------------
# Blocks


def mlp(sizes: list[int], act_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if act_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_down(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def conv_up(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution: (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class MLPEncoder(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int):
        super().__init__()
        self.out_features = out_features
        self.net = mlp([in_features, *hidden, out_features], act_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, D) -> (B, latent)


class MLPDecoder(nn.Module):
    def __init__(self, latent: int, hidden: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = mlp([latent, *reversed(hidden), math.prod(out_shape)], act_last=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)  # (B, *in_shape); shape[0]: the batch stays free under export


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_features): stride-2 convolutions, then a linear map of the flat features."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...], out_features: int):
        super().__init__()
        c, h, w = in_shape
        self.out_features = out_features
        self.convs = nn.Sequential(*[conv_down(a, b) for a, b in zip((c, *channels[:-1]), channels)])
        s = 2 ** len(channels)
        self.feat_shape = (channels[-1], h // s, w // s)
        self.fc = nn.Linear(math.prod(self.feat_shape), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x).flatten(1))  # (B, C', H', W') -> (B, C'*H'*W') -> (B, out)


class ConvDecoder(nn.Module):
    """(B, latent) -> (B, C, H, W): a linear map to a small feature map, then transposed convolutions."""

    def __init__(self, latent: int, channels: tuple[int, ...], feat_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        self.feat_shape = feat_shape
        self.fc = nn.Sequential(nn.Linear(latent, math.prod(feat_shape)), nn.ReLU())
        rev = tuple(reversed(channels))
        ups = [conv_up(a, b) for a, b in zip(rev[:-1], rev[1:])]
        last = nn.ConvTranspose2d(rev[-1], out_channels, 4, stride=2, padding=1)  # no norm, no activation
        self.convs = nn.Sequential(*ups, last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], *self.feat_shape)  # (B, C', H', W'); shape[0]: the batch stays free under export
        return self.convs(h)


def check_conv_shape(in_shape: tuple[int, ...], channels: tuple[int, ...], section: str) -> None:
    check(len(in_shape) == 3, f"[{section}] kind",
          f"'conv' needs images (C, H, W), but the data gives inputs of shape {list(in_shape)}; use kind = 'mlp'")
    s = 2 ** len(channels)
    check(in_shape[1] % s == 0 and in_shape[2] % s == 0, f"[{section}] channels",
          f"{len(channels)} stride-2 stages need H and W divisible by {s}, got {in_shape[1]}x{in_shape[2]}; "
          "use fewer channels entries")


# ---------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Config:
    in_shape: tuple[int, ...] = (1, 28, 28)  # filled from the data
    kind: Literal["mlp", "conv"] = "conv"
    latent: int = 32  # size of the code
    hidden: tuple[int, ...] = (512, 256)  # mlp: widths from input to code (mirrored in the decoder)
    channels: tuple[int, ...] = (32, 64)  # conv: one stride-2 stage per entry

    def __post_init__(self):
        check(self.latent >= 1, "[model] latent", f"must be >= 1, got {self.latent}")
        check(all(h >= 1 for h in self.hidden), "[model] hidden", f"widths must be >= 1, got {list(self.hidden)}")
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "[model] channels",
              f"must be one or more positive widths, got {list(self.channels)}")
        if self.kind == "conv":
            check_conv_shape(self.in_shape, self.channels, "model")


@MODELS.register("autoencoder")
class Autoencoder(nn.Module):
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        shape = tuple(cfg.in_shape)
        if cfg.kind == "mlp":
            self.encoder = MLPEncoder(math.prod(shape), cfg.hidden, cfg.latent)
            self.decoder = MLPDecoder(cfg.latent, cfg.hidden, shape)
        else:
            self.encoder = ConvEncoder(shape, cfg.channels, cfg.latent)
            self.decoder = ConvDecoder(cfg.latent, cfg.channels, self.encoder.feat_shape, shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, *in_shape), unbounded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# Named configurations and their parameter counts on MNIST (1, 28, 28), or on kddcup99's 118
# features (tests check the counts).
PRESETS = {
    "ae-mlp-mnist": (Config(kind="mlp", latent=32, hidden=(512, 256)), 1_083_696),
    "ae-conv-mnist": (Config(kind="conv", latent=32, channels=(32, 64)), 270_817),
    "ae-mlp-kdd": (Config(in_shape=(118,), kind="mlp", latent=8, hidden=(64, 32)), 20_030),
}
