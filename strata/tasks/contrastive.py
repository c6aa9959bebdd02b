"""Self-supervised pretraining by contrast: SimCLR (Chen et al., "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020). Labels are never read.

Each example is seen through two strong random views (strata/tasks/augment.py); the encoder (the
[model], up to its features) and a small projection MLP map them to unit vectors z, and the NT-Xent loss
asks each view to pick out its partner among the 2B - 1 other views of the batch:

    loss = mean_i  -log( exp(z_i . z_j(i) / t) / sum_{k != i} exp(z_i . z_k / t) )

The encoder is what a classifier fine-tunes afterwards, from few labels:

    [model]
    name = "encoder_classifier"
    init_from = "runs/mnist-simclr"   # this run; pretrained = false: the same network from random weights
    freeze_encoder = true             # a linear probe of the frozen features

The encoder is the [model]'s `features(x)` when it has one (cnn, resnet, mlp) and its output otherwise
(a layer list or a user's module that ends in features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strata.config import check
from strata.export.graph import ExportGraph, batch_only
from strata.models import build_model
from strata.tasks import TASKS
from strata.tasks.augment import AugmentConfig, check_augmentable, strong_view
from strata.tasks.base import Loss, Task


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(NT-Xent loss, fraction of views whose nearest other view is their partner) of two (B, D)
    batches of projections, row i of z1 and of z2 being views of the same example."""
    b = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, partner), (sim.argmax(-1) == partner).float().mean()


class Features(nn.Module):
    """A model seen up to its features: (B, ...) -> (B, out_features)."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        was = model.training
        with torch.no_grad():
            out = self.eval()(torch.zeros(2, *in_shape))
        model.train(was)
        if out.ndim != 2:
            from strata.errors import StrataError

            raise StrataError(f"task 'contrastive': the model's features have shape {list(out.shape[1:])} per "
                              "example; the encoder must end in a flat vector (add a flatten or pooling layer)")
        self.out_features = out.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = getattr(self.model, "features", None)
        return features(x) if callable(features) else self.model(x)


class SimCLR(nn.Module):
    """encoder + projection head; forward gives the projections the loss compares."""

    def __init__(self, encoder: Features, hidden: int, dim: int):
        super().__init__()
        self.encoder = encoder
        d = encoder.out_features
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, dim)) if hidden else \
            nn.Linear(d, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


@dataclass(frozen=True)
class ContrastiveConfig(AugmentConfig):
    temperature: float = 0.5
    projection_hidden: int = 256  # 0: a linear projection
    projection_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        check(self.temperature > 0, "[task] temperature", f"must be > 0, got {self.temperature}")
        check(self.projection_hidden >= 0, "[task] projection_hidden", f"must be >= 0, got {self.projection_hidden}")
        check(self.projection_dim >= 1, "[task] projection_dim", f"must be >= 1, got {self.projection_dim}")


@TASKS.register("contrastive")
class Contrastive(Task):
    Config = ContrastiveConfig

    def __init__(self, cfg: ContrastiveConfig, model, info: dict):
        super().__init__(cfg, model, info)
        check_augmentable(info, "contrastive")
        in_shape = tuple(info["in_shape"])
        self.model = SimCLR(Features(build_model(model, **info), in_shape), cfg.projection_hidden, cfg.projection_dim)

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model(torch.cat([strong_view(x, self.cfg), strong_view(x, self.cfg)]))
        return nt_xent(z[: len(x)], z[len(x):], self.cfg.temperature)

    def training_step(self, batch):
        loss, top1 = self._loss(batch["x"])
        yield Loss("main", loss, {"top1": top1.detach()})

    def validation_step(self, batch):
        loss, top1 = self._loss(batch["x"])
        n = len(batch["x"])
        return {"loss": (loss * n, n), "top1": (top1 * n, n)}

    @torch.no_grad()
    def predict_step(self, batch):
        return [{"features": [round(v, 6) for v in row]} for row in self.model.encoder(batch["x"]).tolist()]

    def export_graph(self, batch):
        return ExportGraph(self.model.encoder, (batch["x"],), ["x"], ["features"], "the encoder's features",
                           batch_only(["x"]))
