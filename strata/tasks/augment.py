"""Random views of a batch, made on the training device (no workers, no PIL): the weak and strong
augmentations that semi-supervised and self-supervised tasks compare, for any float input.

- images (B, C, H, W): weak = a random translation (up to `shift` of the side, zero fill) and, with
  `flip`, a horizontal flip; strong = a random affine map (rotation, scale, shear, translation) by
  `affine_grid` + `grid_sample`, optionally thicker or thinner strokes (`morph`), brightness and
  contrast jitter, and a cutout square (DeVries & Taylor 2017) filled with the image's mean, as in
  FixMatch's strong branch (Sohn et al. 2020).
- tables (B, F): weak = Gaussian noise of 0.1 of each feature's batch spread; strong = noise of 0.3 and
  a random 30 % of the features replaced by their batch mean (masking, as in VIME, Yoon et al. 2020).
- sequences (B, C, T): weak = noise and a random shift along time; strong = noise, amplitude scaling and
  a masked span of time (SpecAugment-style, Park et al. 2019).

Integer inputs (token ids) have none of these; the tasks say so at build time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strata.config import check


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate each image by up to `pixels` in x and y (zero fill): pad, then crop at a random offset."""
    if pixels <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))  # (B, C, H+2p, W+2p)
    dx = torch.randint(0, 2 * pixels + 1, (b,), device=x.device)
    dy = torch.randint(0, 2 * pixels + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (B, W)
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def uniform(b: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(b, device=like.device, dtype=torch.float32).uniform_(low, high)


def random_affine(x: torch.Tensor, degrees: float, scale: float, shear: float, translate: float) -> torch.Tensor:
    """Each image through its own random rotation (+-degrees), zoom (1 +- scale), shear (+-shear
    degrees) and translation (+-translate of the side); outside pixels repeat the border."""
    b = x.shape[0]
    rot = uniform(b, -degrees, degrees, x) * (math.pi / 180)
    sh = uniform(b, -shear, shear, x) * (math.pi / 180)
    zoom = uniform(b, 1 - scale, 1 + scale, x)
    cos, sin = torch.cos(rot) / zoom, torch.sin(rot) / zoom
    theta = torch.stack([torch.stack([cos, -sin + torch.tan(sh) * cos, uniform(b, -translate, translate, x) * 2], -1),
                         torch.stack([sin, cos + torch.tan(sh) * sin, uniform(b, -translate, translate, x) * 2], -1)],
                        1)  # (B, 2, 3): output -> input coordinates in [-1, 1]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutout(x: torch.Tensor, size: float) -> torch.Tensor:
    """A random square of up to `size` of the side, per image, set to that image's mean."""
    b, _, h, w = x.shape
    side = (uniform(b, 0.0, size, x) * min(h, w)).round()[:, None, None]  # (B, 1, 1)
    cy = torch.randint(0, h, (b, 1, 1), device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device)
    ys, xs = torch.arange(h, device=x.device)[None, :, None], torch.arange(w, device=x.device)[None, None, :]
    hole = ((ys - cy).abs() * 2 < side) & ((xs - cx).abs() * 2 < side)  # (B, H, W)
    return torch.where(hole[:, None], x.mean((1, 2, 3), keepdim=True), x)


def spread(x: torch.Tensor) -> torch.Tensor:
    """Per-feature (per-channel for sequences) standard deviation over the batch, never 0."""
    dims = [0] + list(range(2, x.ndim))
    return x.float().std(dims, keepdim=True).clamp_min(1e-3).to(x.dtype)


@dataclass(frozen=True)
class AugmentConfig:
    """The [task] keys of the views (shared by semi_supervised and contrastive)."""

    shift: float = 0.125  # weak view: translation, a fraction of the side (images) or of the length
    flip: bool = False  # weak and strong image views: random horizontal flips (natural images, not digits)
    rotate: float = 25.0  # strong image view: degrees
    zoom: float = 0.2  # strong image view: scale 1 +- zoom
    shear: float = 15.0  # strong image view: degrees
    cutout: float = 0.5  # strong image view: a square of up to this fraction of the side
    jitter: float = 0.3  # strong image view: brightness and contrast, +- this fraction
    morph: float = 0.0  # strong image view: chance of thickening or thinning strokes (3x3 dilation / erosion)
    noise: float = 0.3  # strong table / sequence view: Gaussian noise, a fraction of each feature's spread
    mask: float = 0.3  # strong table / sequence view: fraction of features (or of time) masked

    def __post_init__(self):
        for key in ("shift", "zoom", "cutout", "jitter", "mask", "morph"):
            v = getattr(self, key)
            check(0 <= v < 1, f"[task] {key}", f"must be in [0, 1), got {v}")
        for key in ("rotate", "shear"):
            v = getattr(self, key)
            check(0 <= v <= 90, f"[task] {key}", f"must be in [0, 90] degrees, got {v}")
        check(self.noise >= 0, "[task] noise", f"must be >= 0, got {self.noise}")


def check_augmentable(info: dict, task: str) -> None:
    """A task's build-time check that its inputs have views: float images, tables or sequences."""
    from strata.errors import StrataError

    if info.get("vocab_size") or info.get("kind") in ("text", "tokens"):
        raise StrataError(f"task '{task}' compares random views of each input, defined for images, table rows "
                          "and float sequences; this data set gives token ids, which have none")


def flip(x: torch.Tensor) -> torch.Tensor:
    keep = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(keep[:, None, None, None], x, x.flip(-1))


def morph(x: torch.Tensor, p: float) -> torch.Tensor:
    """With chance p/2 each, a 3x3 grey dilation or erosion of the image: thicker or thinner strokes."""
    roll = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
    thick = F.max_pool2d(x, 3, 1, 1)
    thin = -F.max_pool2d(-x, 3, 1, 1)
    return torch.where(roll < p / 2, thick, torch.where(roll < p, thin, x))


def weak_view(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    if x.ndim == 4:
        x = random_shift(x, round(cfg.shift * x.shape[-1]))
        return flip(x) if cfg.flip else x
    x = x + 0.1 * spread(x) * torch.randn_like(x)
    if x.ndim == 3:  # (B, C, T): the same random shift along time for a whole batch keeps it cheap
        x = torch.roll(x, int(torch.randint(-round(cfg.shift * x.shape[-1]), round(cfg.shift * x.shape[-1]) + 1,
                                            ())), dims=-1)
    return x


def strong_view(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    b = x.shape[0]
    if x.ndim == 4:
        if cfg.flip:
            x = flip(x)
        x = random_affine(x, cfg.rotate, cfg.zoom, cfg.shear, cfg.shift)
        if cfg.morph:
            x = morph(x, cfg.morph)
        if cfg.jitter:
            mean = x.mean((1, 2, 3), keepdim=True)
            contrast = uniform(b, 1 - cfg.jitter, 1 + cfg.jitter, x).view(b, 1, 1, 1).to(x.dtype)
            bright = uniform(b, -cfg.jitter, cfg.jitter, x).view(b, 1, 1, 1).to(x.dtype) * x.std((1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean + bright
        return cutout(x, cfg.cutout) if cfg.cutout else x
    s = spread(x)
    x = x + cfg.noise * s * torch.randn_like(x)
    if x.ndim == 2:  # (B, F): mask features with the batch mean
        hide = torch.rand_like(x) < cfg.mask
        return torch.where(hide, x.mean(0, keepdim=True).expand_as(x), x)
    # (B, C, T): scale the amplitude, mask a span of time
    x = x * uniform(b, 1 - cfg.mask, 1 + cfg.mask, x).view(b, 1, 1).to(x.dtype)
    t = x.shape[-1]
    width = (uniform(b, 0, cfg.mask, x) * t).round()[:, None, None]
    start = (torch.rand(b, 1, 1, device=x.device) * t)
    pos = torch.arange(t, device=x.device)[None, None, :]
    hole = (pos >= start) & (pos < start + width)
    return torch.where(hole, torch.zeros_like(x), x)
