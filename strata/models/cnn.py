"""Convolutional networks for images.

- "cnn": a LeNet-style stack (LeCun et al., 1998, "Gradient-based learning applied to document
  recognition"), modernised with 3x3 kernels, batch norm and dropout: stages of convolutions, each
  followed by 2x2 max pooling, then a fully connected head.
- "resnet": a small residual network (He et al., 2016, "Deep Residual Learning for Image
  Recognition"): basic blocks y = relu(x + F(x)) with batch norm, stride-2 stage transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS

ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int, batch_norm: bool, act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=not batch_norm),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        ACT[act](),
    )


# ---------------------------------------------------------------------------------------------
# LeNet-style CNN


@dataclass(frozen=True)
class CNNConfig:
    in_channels: int = 1  # filled from the data set
    image_size: int = 28
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)  # one stage per entry; each stage halves the resolution
    convs_per_stage: int = 1
    kernel_size: int = 3
    batch_norm: bool = True
    activation: Literal["relu", "gelu", "silu"] = "relu"
    fc_hidden: int = 128  # 0: straight from the pooled features to the classes
    dropout: float = 0.0
    global_pool: bool = False  # average over space instead of flattening

    def __post_init__(self):
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "[model] channels",
              f"must be a non-empty list of positive widths, got {list(self.channels)}")
        check(self.image_size >> len(self.channels) >= 1, "[model] channels",
              f"{len(self.channels)} stages halve a {self.image_size}px image below 1px; use fewer stages")
        check(self.kernel_size % 2 == 1, "[model] kernel_size", f"must be odd, got {self.kernel_size}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.convs_per_stage >= 1, "[model] convs_per_stage", f"must be >= 1, got {self.convs_per_stage}")


@MODELS.register("cnn")
class CNN(nn.Module):
    Config = CNNConfig

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        stages, c = [], cfg.in_channels
        for width in cfg.channels:
            convs = [conv_bn_act(c if j == 0 else width, width, cfg.kernel_size, 1, cfg.batch_norm, cfg.activation)
                     for j in range(cfg.convs_per_stage)]
            stages.append(nn.Sequential(*convs, nn.MaxPool2d(2)))
            c = width
        self.stages = nn.Sequential(*stages)
        side = cfg.image_size >> len(cfg.channels)
        flat = c if cfg.global_pool else c * side * side
        head_in = flat
        fc: list[nn.Module] = [nn.AdaptiveAvgPool2d(1) if cfg.global_pool else nn.Identity(), nn.Flatten()]
        if cfg.fc_hidden:
            fc += [nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity(), nn.Linear(flat, cfg.fc_hidden),
                   ACT[cfg.activation]()]
            head_in = cfg.fc_hidden
        fc.append(nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity())
        self.neck = nn.Sequential(*fc)
        self.head = nn.Linear(head_in, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, F)."""
        return self.neck(self.stages(x))  # (B, C, H', W') -> (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


# ---------------------------------------------------------------------------------------------
# Small ResNet


class BasicBlock(nn.Module):
    """y = relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))"""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.shortcut(x) + self.body(x))


@dataclass(frozen=True)
class ResNetConfig:
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # stage widths; every stage after the first halves the resolution
    blocks_per_stage: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), "[model] widths",
              f"must be a non-empty list of positive widths, got {list(self.widths)}")
        check(self.blocks_per_stage >= 1, "[model] blocks_per_stage", f"must be >= 1, got {self.blocks_per_stage}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")


@MODELS.register("resnet")
class ResNet(nn.Module):
    Config = ResNetConfig

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = conv_bn_act(cfg.in_channels, cfg.widths[0], 3, 1, True, "relu")
        blocks, c = [], cfg.widths[0]
        for s, w in enumerate(cfg.widths):
            for b in range(cfg.blocks_per_stage):
                blocks.append(BasicBlock(c, w, 2 if (s > 0 and b == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(c, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))  # (B, widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Presets for 1x28x28 inputs, 10 classes: name -> (config, parameters)
PRESETS = {
    "lenet": (CNNConfig(channels=(32, 64), fc_hidden=128), 421_738),
    "resnet-small": (ResNetConfig(), 696_042),
}
