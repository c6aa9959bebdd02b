"""Multilayer perceptron: inputs -> [Linear -> norm -> activation -> dropout] x depth -> Linear.

The plain deep network of Rumelhart, Hinton & Williams (1986), trained by backpropagation; with the
options modern practice adds (batch/layer norm, dropout, GELU/SiLU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from strata.config import check
from strata.models import MODELS

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU}


def make_norm(kind: str, width: int) -> nn.Module:
    return {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[kind](width) if kind != "none" else nn.Identity()


@dataclass(frozen=True)
class MLPConfig:
    in_shape: tuple[int, ...] = (1, 28, 28)  # filled from the data set when left out
    num_classes: int = 10
    hidden: tuple[int, ...] = (256, 256)  # one width per hidden layer: depth = len(hidden)
    activation: Literal["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu"] = "relu"
    norm: Literal["none", "batch", "layer"] = "none"
    dropout: float = 0.0

    def __post_init__(self):
        check(all(h >= 1 for h in self.hidden), "[model] hidden", f"widths must be >= 1, got {list(self.hidden)}")
        check(0 <= self.dropout < 1, "[model] dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.num_classes >= 1, "[model] num_classes", f"must be >= 1, got {self.num_classes}")


@MODELS.register("mlp")
class MLP(nn.Module):
    Config = MLPConfig

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(cfg.in_shape)
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), make_norm(cfg.norm, h), ACTIVATIONS[cfg.activation]()]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, hidden[-1]): what the head sees."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits


# Presets (MNIST input, 10 classes): name -> (config, parameters)
PRESETS = {
    "mlp-small": (MLPConfig(hidden=(256, 256)), 269_322),
    "mlp-mnist": (MLPConfig(hidden=(1024, 1024), dropout=0.2), 1_863_690),
}
