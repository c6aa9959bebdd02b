"""Variational autoencoder with a convolutional encoder and decoder.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. The encoder gives a diagonal
Gaussian posterior q(z|x) = N(mu, diag(exp(logvar))), a sample is drawn with the
reparameterisation z = mu + exp(logvar / 2) * eps, and the decoder gives p(x|z):
- "bernoulli": per-pixel logits (images in [0, 1], the usual choice for MNIST);
- "gaussian": per-pixel means with one learned scale sigma shared by all pixels
  (Rybkin et al., "Simple and Effective VAE Training with Calibrated Decoders", ICML 2021).
The prior is N(0, I). The loss (negative ELBO, beta weight, nats) lives in strata/tasks/vae.py.

`.encoder(x)` returns the posterior mean (B, latent) and has `.out_features`, so a classifier can
be built on it (strata/models/pretrained.py); `decode(z)` maps codes to decoder outputs and
`mean_image(out)` turns those into images in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from strata.config import check
from strata.models import MODELS
from strata.models.autoencoder import ConvDecoder, conv_down, check_conv_shape

LOG_2PI = math.log(2 * math.pi)


class GaussianEncoder(nn.Module):
    """x -> (mu, logvar) of q(z|x). Calling it returns mu, the deterministic code for downstream use."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...], hidden: int, latent: int):
        super().__init__()
        c, h, w = in_shape
        self.out_features = latent
        self.convs = nn.Sequential(*[conv_down(a, b) for a, b in zip((c, *channels[:-1]), channels)])
        s = 2 ** len(channels)
        self.feat_shape = (channels[-1], h // s, w // s)
        self.fc = nn.Sequential(nn.Linear(math.prod(self.feat_shape), hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.convs(x).flatten(1))  # (B, C', H', W') -> (B, hidden)
        return self.mu(h), self.logvar(h)  # (B, latent) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu(self.fc(self.convs(x).flatten(1)))  # (B, latent)

    def drop_variance(self) -> None:
        """For use as a plain feature extractor: remove the logvar head, which would otherwise hold
        parameters that never get a gradient (DDP refuses those)."""
        del self.logvar


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats:
    0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


@dataclass(frozen=True)
class Config:
    in_shape: tuple[int, ...] = (1, 28, 28)  # filled from the data
    latent: int = 32
    channels: tuple[int, ...] = (32, 64)  # one stride-2 stage per entry, mirrored in the decoder
    hidden: int = 256  # width of the dense layer between the convolutions and (mu, logvar)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"

    def __post_init__(self):
        check(self.latent >= 1, "[model] latent", f"must be >= 1, got {self.latent}")
        check(self.hidden >= 1, "[model] hidden", f"must be >= 1, got {self.hidden}")
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "[model] channels",
              f"must be one or more positive widths, got {list(self.channels)}")
        check_conv_shape(self.in_shape, self.channels, "model")


@MODELS.register("vae")
class VAE(nn.Module):
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        shape = tuple(cfg.in_shape)
        self.encoder = GaussianEncoder(shape, cfg.channels, cfg.hidden, cfg.latent)
        fs = self.encoder.feat_shape
        self.decoder = nn.Sequential(nn.Linear(cfg.latent, cfg.hidden), nn.ReLU(),
                                     ConvDecoder(cfg.hidden, cfg.channels, fs, shape[0]))
        if cfg.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(()))  # shared decoder scale, learned

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.stats(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, C, H, W) logits (bernoulli) or means (gaussian)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation
        return self.decode(z), mu, logvar

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats (summed over pixels)."""
        if self.cfg.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        # -log N(x; out, sigma^2) = 0.5 * ((x - out) / sigma)^2 + log sigma + 0.5 * log(2 pi)
        ls = self.log_sigma.clamp(min=-6.0)
        per_pixel = 0.5 * ((x - out) * torch.exp(-ls)).pow(2) + ls + 0.5 * LOG_2PI
        return per_pixel.flatten(1).sum(1)

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the mean of p(x|z), clipped to [0, 1]."""
        return torch.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, (n, C, H, W) in [0, 1] (the decoder mean, no pixel noise)."""
        dev = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent, generator=generator, device="cpu").to(dev)
        return self.mean_image(self.decode(z))


# Named configurations and their parameter counts on MNIST (1, 28, 28) (tests check the counts).
PRESETS = {
    "vae-mnist-small": (Config(latent=16, channels=(32, 64), hidden=256), 1_688_545),
    "vae-mnist": (Config(latent=32, channels=(32, 64), hidden=512), 3_331_585),
    "vae-mnist-wide": (Config(latent=32, channels=(64, 128), hidden=512), 6_744_001),
}
