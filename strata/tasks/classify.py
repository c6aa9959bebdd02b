"""Supervised classification of fixed-size inputs (images, table rows): cross-entropy, accuracy.

Batches: {"x": (B, ...) inputs, "y": (B,) class indices}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from strata.config import check
from strata.errors import StrataError
from strata.export.graph import ExportGraph, batch_only
from strata.models import build_model
from strata.tasks import TASKS
from strata.tasks.augment import random_shift
from strata.tasks.base import Task


def top_k_predictions(logits: torch.Tensor, class_names: list[str], k: int) -> list[dict]:
    """(B, classes) logits -> per example: the label, its probability, and the k most likely classes."""
    probs = logits.float().softmax(-1)
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    out = []
    for ps, ids in zip(top_p.tolist(), top_i.tolist()):
        top = [{"label": class_names[i], "index": i, "probability": round(p, 6)} for p, i in zip(ps, ids)]
        out.append({"label": top[0]["label"], "probability": top[0]["probability"], "top": top})
    return out


def classes_postprocess(class_names: list[str], top_k: int) -> dict:
    """How exported class logits become `strata predict`'s answer (top_k_predictions above)."""
    return {"softmax": "logits", "class_names": list(class_names), "top_k": top_k, "round": 6,
            "answer": "label: the most probable class; probability; top: the top_k classes"}


@dataclass(frozen=True)
class ClassifyConfig:
    num_classes: int = 10  # from the data set
    label_smoothing: float = 0.0
    augment: Literal["none", "shift"] = "none"  # "shift": random translations of images during training
    shift_pixels: int = 2
    top_k: int = 3  # classes listed by predict

    def __post_init__(self):
        check(0 <= self.label_smoothing < 1, "[task] label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        check(self.shift_pixels >= 0, "[task] shift_pixels", f"must be >= 0, got {self.shift_pixels}")
        check(self.top_k >= 1, "[task] top_k", f"must be >= 1, got {self.top_k}")


@TASKS.register("classify")
class Classify(Task):
    Config = ClassifyConfig

    def __init__(self, cfg: ClassifyConfig, model, info: dict):
        super().__init__(cfg, model, info)
        if "num_outputs" in info and "num_classes" not in info:
            raise StrataError("this data set's target is a number to predict (a regression target), not a class; "
                              "use [task] name = \"regress\" (or, for a CSV table of class codes, [data] "
                              "target_kind = \"class\")")
        self.model = build_model(model, **info)
        self.class_names = info.get("class_names") or [str(i) for i in range(cfg.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch):
        x = batch["x"]
        if self.cfg.augment == "shift" and x.ndim == 4:
            x = random_shift(x, self.cfg.shift_pixels)
        logits = self.model(x)
        return F.cross_entropy(logits, batch["y"], label_smoothing=self.cfg.label_smoothing)

    def net(self) -> torch.nn.Module:
        """The network that validates, predicts, explains and exports (an EMA copy, in subclasses)."""
        return self.model

    def validation_step(self, batch):
        logits = self.net()(batch["x"])
        y = batch["y"]
        n = y.numel()
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(-1) == y).sum()
        return {"loss": (loss, n), "acc": (correct, n)}

    @torch.no_grad()
    def predict_step(self, batch):
        return top_k_predictions(self.net()(batch["x"]), self.class_names, self.cfg.top_k)

    def explain_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.net()(x)

    def explain_names(self) -> list[str]:
        return self.class_names

    def export_graph(self, batch):
        return ExportGraph(self.net(), (batch["x"],), ["x"], ["logits"], "class logits", batch_only(["x"]),
                           postprocess=classes_postprocess(self.class_names, self.cfg.top_k))

    @torch.no_grad()
    def predictions(self, x: torch.Tensor) -> torch.Tensor:
        return self.net()(x).argmax(-1)
