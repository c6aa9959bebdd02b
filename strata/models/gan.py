"""DCGAN: a convolutional generator and discriminator for small images (28x28, 32x32).

Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", 2016 (arXiv:1511.06434): strided (transposed) convolutions instead of pooling,
batch norm in both nets, ReLU in G, LeakyReLU(0.2) in D, tanh output.
Options beyond the paper:
- spectral norm on every D layer (Miyato et al., "Spectral Normalization for GANs", 2018), which
  replaces D's batch norm;
- class conditioning: G sees a learned class embedding concatenated to z; D uses the projection
  head of Miyato & Koyama, "cGANs with Projection Discriminator", 2018:
  D(x, y) = w . h(x) + embed(y) . h(x).

Images live in [-1, 1] inside this model (the task maps data from [0, 1]). The training loss and
the alternation of the two nets belong to the task (strata/tasks/gan.py), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from strata.config import check
from strata.models import MODELS


def _maybe_sn(layer: nn.Module, on: bool) -> nn.Module:
    return _sn(layer) if on else layer


class Generator(nn.Module):
    """z (B, latent_dim) [+ class] -> image (B, C, S, S) in [-1, 1]; S = 4 * start resolution."""

    def __init__(self, latent_dim: int, channels: int, out_channels: int, image_size: int, num_classes: int,
                 embed_dim: int):
        super().__init__()
        self.start = image_size // 4  # 28 -> 7, 32 -> 8
        self.c0 = channels * 4
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        self.project = nn.Sequential(
            nn.Linear(in_dim, self.c0 * self.start * self.start, bias=False),
            nn.BatchNorm1d(self.c0 * self.start * self.start),
            nn.ReLU(inplace=True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.c0, channels * 2, 4, 2, 1, bias=False),  # S/4 -> S/2
            nn.BatchNorm2d(channels * 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels * 2, channels, 4, 2, 1, bias=False),  # S/2 -> S
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)  # (B, latent + embed)
        h = self.project(z).view(-1, self.c0, self.start, self.start)  # (B, 4C, S/4, S/4)
        return self.net(h)


class Discriminator(nn.Module):
    """image (B, C, S, S) [+ class] -> one logit per image (B,); > 0 means 'real'."""

    def __init__(self, channels: int, in_channels: int, image_size: int, num_classes: int, spectral_norm: bool):
        super().__init__()
        norm = (lambda c: nn.Identity()) if spectral_norm else nn.BatchNorm2d
        self.net = nn.Sequential(
            _maybe_sn(nn.Conv2d(in_channels, channels, 4, 2, 1), spectral_norm),  # S -> S/2
            nn.LeakyReLU(0.2, inplace=True),
            _maybe_sn(nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), spectral_norm),  # S/2 -> S/4
            norm(channels * 2),
            nn.LeakyReLU(0.2, inplace=True),
            _maybe_sn(nn.Conv2d(channels * 2, channels * 4, 3, 1, 1, bias=False), spectral_norm),
            norm(channels * 4),
            nn.LeakyReLU(0.2, inplace=True),
        )
        feat = channels * 4 * (image_size // 4) ** 2
        self.head = _maybe_sn(nn.Linear(feat, 1), spectral_norm)
        self.embed = _maybe_sn(nn.Embedding(num_classes, feat), spectral_norm) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x).flatten(1)  # (B, 4C * (S/4)^2)
        out = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)  # projection: <embed(y), h(x)>
        return out


@dataclass(frozen=True)
class Config:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10  # filled from the data; used only when conditional
    conditional: bool = False
    latent_dim: int = 64
    g_channels: int = 64  # generator width at full resolution (x2, x4 lower down)
    d_channels: int = 64
    embed_dim: int = 32  # class embedding concatenated to z (conditional)
    spectral_norm: bool = False

    def __post_init__(self):
        check(self.image_size % 4 == 0 and self.image_size >= 8, "[model] image_size",
              f"must be a multiple of 4 and >= 8 (28 and 32 are the tested sizes), got {self.image_size}")
        check(self.in_channels >= 1, "[model] in_channels", f"must be >= 1, got {self.in_channels}")
        check(self.latent_dim >= 1, "[model] latent_dim", f"must be >= 1, got {self.latent_dim}")
        check(self.g_channels >= 1 and self.d_channels >= 1, "[model] g_channels / d_channels",
              f"must be >= 1, got {self.g_channels} / {self.d_channels}")
        check(not self.conditional or self.num_classes >= 2, "[model] conditional",
              f"needs a data set with >= 2 classes, got num_classes = {self.num_classes}")


@MODELS.register("dcgan")
class DCGAN(nn.Module):
    """Holds `.generator` and `.discriminator`; the task gives each its own optimiser."""

    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        k = cfg.num_classes if cfg.conditional else 0
        self.generator = Generator(cfg.latent_dim, cfg.g_channels, cfg.in_channels, cfg.image_size, k, cfg.embed_dim)
        self.discriminator = Discriminator(cfg.d_channels, cfg.in_channels, cfg.image_size, k, cfg.spectral_norm)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # DCGAN paper: all weights from N(0, 0.02); batch-norm scales from N(1, 0.02).
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(w, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(w, 0.0, 0.02)

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Generate: z (B, latent_dim) -> images (B, C, S, S) in [-1, 1]."""
        return self.generator(z, y)


# Presets for 28x28 grey images (MNIST, Fashion-MNIST); parameter counts are G / D, unconditional
# (conditional adds num_classes * embed_dim to G and num_classes * 4C * 49 to D).
#   name    latent g_ch d_ch   G params   D params
#   tiny      32    16   16     147,825     30,225
#   small     64    32   32     578,273    113,697
#   base      64    64   64   1,484,225    440,385
PRESETS = {
    "tiny": dict(latent_dim=32, g_channels=16, d_channels=16),
    "small": dict(latent_dim=64, g_channels=32, d_channels=32),
    "base": dict(latent_dim=64, g_channels=64, d_channels=64),
}
