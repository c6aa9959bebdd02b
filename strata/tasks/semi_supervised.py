"""Semi-supervised classification: a few labelled examples and many unlabelled ones, trained together.

The method is FixMatch (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency
and Confidence", NeurIPS 2020). For each unlabelled example the model's prediction on a weakly
augmented view becomes a pseudo-label when its confidence reaches `threshold`; the model is then
trained to predict that label on a strongly augmented view of the same example:

    loss = CE(f(weak(x)), y)  +  unlabelled_weight * mean_u[ 1{max p(weak(u)) >= threshold} * CE(f(strong(u)), argmax p) ]

With `distribution_alignment` (ReMixMatch, Berthelot et al. 2020) the weak-view probabilities are
first multiplied by (class frequencies of the labelled examples) / (running mean of the model's
predictions on unlabelled ones) and renormalised, so a class the model over-predicts early (a 7 taken
for a 2) cannot feed itself pseudo-labels.

With `adaptive_threshold` the fixed `threshold` gives way to FreeMatch's self-adaptive ones (Wang et al.,
"FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023): a global threshold that
follows the running mean of the model's confidence (from 1 / classes at the start, so the first
pseudo-labels come from a model that is still unsure, not from the few classes it learns first), scaled
per class by the running mean of that class's probability over its largest:

    tau_c = mean(max p) * mean(p_c) / max_k mean(p_k)     (running means over ~1,000 batches)

Pseudo-labels come from the model itself (the paper) or, with `ema_decay > 0`, from an exponential
moving average of its weights (a "mean teacher", Tarvainen & Valpola 2017), which then also
validates, predicts and exports. Views are made on the device (strata/tasks/augment.py).

Batches come from `[data] unlabelled = true` (strata/data/unlabelled.py):
{"x": (B, ...), "y": (B,), "u": (B, mu, ...)}. The unlabelled examples' labels never reach the task.

    [data]
    name = "mnist"
    labels_per_class = 10   # 100 labels; the other 53,900 training images are used without theirs
    unlabelled = true
    [task]
    name = "semi_supervised"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strata.config import check
from strata.errors import StrataError
from strata.nn.ema import ema_copy, ema_update_
from strata.tasks import TASKS
from strata.tasks.augment import AugmentConfig, check_augmentable, strong_view, weak_view
from strata.tasks.base import Loss
from strata.tasks.classify import Classify


@dataclass(frozen=True)
class SemiSupervisedConfig(AugmentConfig):
    num_classes: int = 10  # from the data set
    threshold: float = 0.95  # confidence a weak-view prediction needs to become a pseudo-label (fixed thresholds)
    unlabelled_weight: float = 1.0  # lambda_u
    unlabelled_warmup: int = 0  # optimiser steps over which lambda_u rises linearly from 0 (0: at once)
    distribution_alignment: bool = True  # rescale pseudo-label probabilities towards the labelled class frequencies
    adaptive_threshold: bool = False  # FreeMatch's self-adaptive per-class thresholds; `threshold` is then unused
    ema_decay: float = 0.0  # > 0: pseudo-labels, validation and predictions from an EMA of the weights
    top_k: int = 3  # classes listed by predict

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.threshold <= 1, "[task] threshold", f"must be in (0, 1], got {self.threshold}")
        check(self.unlabelled_weight >= 0, "[task] unlabelled_weight", f"must be >= 0, got {self.unlabelled_weight}")
        check(self.unlabelled_warmup >= 0, "[task] unlabelled_warmup", f"must be >= 0, got {self.unlabelled_warmup}")
        check(0 <= self.ema_decay < 1, "[task] ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(self.top_k >= 1, "[task] top_k", f"must be >= 1, got {self.top_k}")


@TASKS.register("semi_supervised")
class SemiSupervised(Classify):
    Config = SemiSupervisedConfig
    uses_unlabelled = True  # [data] unlabelled = true is meant for this task

    def __init__(self, cfg: SemiSupervisedConfig, model, info: dict):
        check_augmentable(info, "semi_supervised")
        if "unlabelled" not in info and info:
            raise StrataError("task 'semi_supervised' learns from labelled and unlabelled examples together, but this "
                              "data set gives only labelled ones; set [data] unlabelled = true with labels_per_class "
                              "(or limit) leaving examples out, e.g. labels_per_class = 10")
        super().__init__(cfg, model, info)
        k = self.cfg.num_classes
        # running class frequencies: of the labelled examples, and of the predictions on unlabelled ones
        self.register_buffer("labelled_freq", torch.full((k,), 1.0 / k))
        self.register_buffer("predicted_freq", torch.full((k,), 1.0 / k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # optimiser steps so far
        if cfg.adaptive_threshold:  # FreeMatch: running means of the confidence and of each class's probability
            self.register_buffer("mean_confidence", torch.full((), 1.0 / k))
            self.register_buffer("class_confidence", torch.full((k,), 1.0 / k))
        if cfg.ema_decay:
            # a child module, so every checkpoint carries it
            self.ema = ema_copy(self.model)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def net(self) -> torch.nn.Module:
        return self.ema if self.cfg.ema_decay else self.model

    def training_step(self, batch):
        x, y, u = batch["x"], batch["y"], batch.get("u")
        if u is None:
            raise StrataError("task 'semi_supervised' got a batch without unlabelled examples ('u'); set [data] "
                              "unlabelled = true")
        u = u.flatten(0, 1)  # (B, mu, ...) -> (B * mu, ...)
        with torch.no_grad():
            teacher = self.ema if self.cfg.ema_decay else self.model
            probs = teacher(weak_view(u, self.cfg)).float().softmax(-1)
            if self.cfg.distribution_alignment:
                probs = self.align(probs, y)
            confidence, pseudo = probs.max(-1)
            threshold = self.thresholds(probs, confidence)[pseudo] if self.cfg.adaptive_threshold \
                else self.cfg.threshold
            keep = (confidence >= threshold).float()
        logits = self.model(torch.cat([weak_view(x, self.cfg), strong_view(u, self.cfg)]))
        supervised = F.cross_entropy(logits[: len(x)], y)
        consistency = (F.cross_entropy(logits[len(x):], pseudo, reduction="none") * keep).mean()
        warmup = self.cfg.unlabelled_warmup
        ramp = ((self.updates + 1).float() / warmup).clamp(max=1.0) if warmup else 1.0  # on device: no sync
        loss = supervised + self.cfg.unlabelled_weight * ramp * consistency
        yield Loss("main", loss, {"supervised": supervised.detach(), "consistency": consistency.detach(),
                                  "mask": keep.mean()})

    def align(self, probs: torch.Tensor, y: torch.Tensor, momentum: float = 0.99) -> torch.Tensor:
        """Distribution alignment: probs * labelled_freq / predicted_freq, renormalised; both running means
        are updated with this batch first (over ~100 batches)."""
        seen = torch.bincount(y, minlength=len(self.labelled_freq)).float() / len(y)
        self.labelled_freq.mul_(momentum).add_(seen, alpha=1 - momentum)
        self.predicted_freq.mul_(momentum).add_(probs.mean(0), alpha=1 - momentum)
        aligned = probs * (self.labelled_freq / self.predicted_freq.clamp_min(1e-6))
        return aligned / aligned.sum(-1, keepdim=True)

    def thresholds(self, probs: torch.Tensor, confidence: torch.Tensor, momentum: float = 0.999) -> torch.Tensor:
        """FreeMatch's per-class thresholds (k,), after updating the running means with this batch."""
        self.mean_confidence.mul_(momentum).add_(confidence.mean(), alpha=1 - momentum)
        self.class_confidence.mul_(momentum).add_(probs.mean(0), alpha=1 - momentum)
        return self.mean_confidence * self.class_confidence / self.class_confidence.max()

    def after_optimizer_step(self, name: str) -> None:
        self.updates += 1
        if self.cfg.ema_decay:
            ema_update_(self.ema, self.model, self.cfg.ema_decay, self.ema_updates)
            self.ema_updates += 1
