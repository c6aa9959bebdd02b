"""A small U-Net that predicts the noise in a noised image, for DDPM-style diffusion.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", 2020 (arXiv:2006.11239): a U-Net of
residual blocks with group norm, a sinusoidal embedding of the time step added inside every block,
and self-attention at low resolution. Class conditioning follows Ho & Salimans, "Classifier-Free
Diffusion Guidance", 2022 (arXiv:2207.12598): a learned class embedding added to the time
embedding, with one extra "null" class (index num_classes) that stands for "no label", so one
network gives both the conditional and the unconditional prediction.

The noise schedule, the loss and the samplers belong to the task (strata/tasks/diffusion.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strata.config import check
from strata.models import MODELS


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids of the step: emb[:, i] = sin(t / P^(i/h)), emb[:, h+i] = cos(...), h = dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the (time + class) embedding as a per-channel shift, twice; residual."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map; residual."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, nh, hd, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, nh, HW, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


class Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)  # 28 -> 14 -> 7, 32 -> 16 -> 8

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass(frozen=True)
class Config:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10  # filled from the data; used only when conditional
    conditional: bool = False  # adds the class embedding (and its null class) for guidance
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one level per entry; level i has base * mult[i] channels
    num_res_blocks: int = 1  # per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention
    heads: int = 4
    dropout: float = 0.1

    def __post_init__(self):
        levels = len(self.channel_mult)
        check(levels >= 1, "[model] channel_mult", "needs at least one level, e.g. [1, 2, 2]")
        check(self.image_size % (2 ** (levels - 1)) == 0, "[model] image_size",
              f"must be divisible by 2^(levels - 1) = {2 ** (levels - 1)} for {levels} levels, got {self.image_size}")
        check(self.base_channels >= 8 and self.base_channels % 8 == 0, "[model] base_channels",
              f"must be a multiple of 8 (group norm uses 8 groups), got {self.base_channels}")
        check(all(0 <= a < levels for a in self.attention_levels), "[model] attention_levels",
              f"levels run from 0 to {levels - 1}, got {list(self.attention_levels)}")
        check(all(self.base_channels * m % self.heads == 0 for m in self.channel_mult), "[model] heads",
              f"must divide every level's channel count, got {self.heads}")
        check(1 <= self.num_res_blocks <= 1000, "[model] num_res_blocks",
              f"must be in [1, 1000], got {self.num_res_blocks}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(not self.conditional or self.num_classes >= 2, "[model] conditional",
              f"needs a data set with >= 2 classes, got num_classes = {self.num_classes}")


@MODELS.register("unet")
class UNet(nn.Module):
    """eps_theta(x_t, t, y): noised image (B, C, S, S), step (B,), class (B,) or None -> noise (B, C, S, S)."""

    Config = Config

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row num_classes is the null class: "unconditional" for classifier-free guidance.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.conditional else None
        self.null_class = cfg.num_classes if cfg.conditional else None

        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        c = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(c, ch * mult, emb_dim, cfg.dropout)]
                c = ch * mult
                if level in cfg.attention_levels:
                    blocks.append(SelfAttention(c, cfg.heads))
                self.down.append(nn.ModuleList(blocks))
                skips.append(c)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Down(c)]))
                skips.append(c)

        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, cfg.dropout), SelfAttention(c, cfg.heads),
                                  ResBlock(c, c, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(c + skips.pop(), ch * mult, emb_dim, cfg.dropout)]
                c = ch * mult
                if level in cfg.attention_levels:
                    blocks.append(SelfAttention(c, cfg.heads))
                if level != 0 and i == cfg.num_res_blocks:
                    blocks.append(Up(c))
                self.up.append(nn.ModuleList(blocks))

        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for b in blocks:
            h = b(h, emb) if isinstance(b, ResBlock) else b(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))  # (B, 4 * base)
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = self._run(blocks, h, emb)
        return self.out(h)


# Presets for 28x28 grey images; parameter counts with num_classes = 10, conditional.
#   name    base  mult       res/level  attention   params
#   tiny     16   (1, 2, 2)      1       7x7           280,881   (recipes/mnist-ddpm.toml)
#   small    32   (1, 2, 2)      1       7x7         1,114,209
#   base     64   (1, 2, 2)      2       14x14, 7x7  6,804,225
PRESETS = {
    "tiny": dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,)),
    "small": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,)),
    "base": dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1, 2)),
}
