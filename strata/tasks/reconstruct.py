"""Reconstruction: train an autoencoder to rebuild its input, and flag inputs it rebuilds badly.

The anomaly score of an example is its own reconstruction error (mean over features of the squared
error or of the binary cross-entropy). Trained on normal data only, the model rebuilds normal
examples well and unusual ones badly, so a high score means "does not fit" (the fraud and intrusion
detection use of autoencoders; Sakurada & Yairi, MLSDA 2014).

Which examples are anomalous:
- a batch key `anomaly` (0 normal, 1 anomalous), as the kddcup99 data set gives; or
- `anomaly_classes = [k, ...]`: examples whose label `y` is in the list (MNIST one-class: train on
  all digits but one, then detect the held-out digit).
Anomalous examples never contribute to the training loss. On validation and test data the task
reports the AUROC of the score and the precision and recall at a false-positive rate of
`target_fpr`. After each validation that follows training, the alarm threshold is set to the
(1 - target_fpr) quantile of the normal validation scores and saved as a buffer in the checkpoint;
`strata predict RUN_DIR input` prints each input's score and whether it is over that threshold.

Denoising (Vincent et al., ICML 2008): `noise = "gaussian"` adds N(0, noise_level^2) to the
training inputs, `noise = "mask"` zeroes a fraction noise_level of them; the target stays clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from strata.config import check
from strata.errors import StrataError
from strata.export.graph import ExportGraph, Outputs, batch_only
from strata.models import build_model
from strata.tasks import TASKS
from strata.tasks.base import Task


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties
    counting one half (the Mann-Whitney U statistic over the product of class sizes)."""
    scores = scores.double().flatten()
    labels = labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Average the ranks of tied scores.
    uniq, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        first = torch.cumsum(counts, 0) - counts + 1  # rank of the first member of each tie group
        mean_rank = first.double() + (counts.double() - 1) / 2
        ranks[order] = mean_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def rates_at(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Precision, recall and false-positive rate of the alarm `score > threshold`."""
    labels = labels.bool()
    alarm = scores > threshold
    tp = int((alarm & labels).sum())
    fp = int((alarm & ~labels).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / n_pos if n_pos else float("nan"),
        "fpr": fp / n_neg if n_neg else float("nan"),
    }


def normal_quantile(scores: torch.Tensor, q: float) -> float:
    """The q quantile of the scores (linear interpolation), the alarm threshold for FPR = 1 - q."""
    return float(torch.quantile(scores.double(), q))


@dataclass(frozen=True)
class Config:
    loss: Literal["mse", "bce"] = "mse"  # bce reads the decoder output as logits (images in [0, 1])
    noise: Literal["none", "gaussian", "mask"] = "none"  # denoising: corrupt training inputs only
    noise_level: float = 0.0  # gaussian: std; mask: fraction of features zeroed
    anomaly_classes: tuple[int, ...] = ()  # labels y counted as anomalous (left out of training)
    target_fpr: float = 0.01  # threshold = (1 - target_fpr) quantile of normal validation scores

    def __post_init__(self):
        check(self.noise_level >= 0, "[task] noise_level", f"must be >= 0, got {self.noise_level}")
        check(self.noise != "mask" or self.noise_level < 1, "[task] noise_level",
              f"with noise = 'mask' it is the fraction zeroed and must be < 1, got {self.noise_level}")
        check(self.noise == "none" or self.noise_level > 0, "[task] noise_level",
              f"noise = '{self.noise}' needs noise_level > 0")
        check(0 < self.target_fpr < 1, "[task] target_fpr", f"must be in (0, 1), got {self.target_fpr}")


@TASKS.register("reconstruct")
class ReconstructTask(Task):
    Config = Config

    def __init__(self, cfg: Config, model, info: dict):
        super().__init__(cfg, model, info)
        if "in_shape" not in info:
            raise StrataError("task 'reconstruct' needs a data set that states its input shape (info['in_shape'])")
        self.model = build_model(model, in_shape=tuple(info["in_shape"]))
        if not hasattr(self.model, "encoder") or not hasattr(self.model, "decoder"):
            raise StrataError(f"task 'reconstruct' needs an encoder-decoder model such as 'autoencoder', "
                              f"got model '{model.name}'")
        if cfg.anomaly_classes and info.get("num_classes"):
            bad = [k for k in cfg.anomaly_classes if not 0 <= k < info["num_classes"]]
            if bad:
                raise StrataError(f"[task] anomaly_classes: {bad} are not classes of this data set "
                                  f"(0 .. {info['num_classes'] - 1})")
        # Alarm threshold on the score, chosen on validation data; NaN until the first validation.
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._trained_since_val = False
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    # --- pieces ------------------------------------------------------------------------------
    def anomaly_labels(self, batch: dict) -> torch.Tensor | None:
        """(B,) bool, True for anomalous examples; None when the batch does not say."""
        if "anomaly" in batch:
            return batch["anomaly"].bool()
        if self.cfg.anomaly_classes:
            if "y" not in batch:
                raise StrataError("[task] anomaly_classes needs labelled data (a 'y' in each batch)")
            classes = torch.tensor(self.cfg.anomaly_classes, device=batch["y"].device)
            return torch.isin(batch["y"], classes)
        return None

    def scores(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Per-example reconstruction error, averaged over features: (B,)."""
        if self.cfg.loss == "bce":
            err = F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            err = (out - x).pow(2)
        return err.flatten(1).mean(1)

    def reconstruction(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.cfg.loss == "bce" else out

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.noise == "gaussian":
            return x + self.cfg.noise_level * torch.randn_like(x)
        if self.cfg.noise == "mask":
            return x * (torch.rand_like(x) >= self.cfg.noise_level)
        return x

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x, self.model(x))

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        s = self.scores(x, self.model(self.corrupt(x)))
        anomalous = self.anomaly_labels(batch)
        self._trained_since_val = True
        if anomalous is None:
            return s.mean()
        normal = (~anomalous).float()
        return (s * normal).sum() / normal.sum().clamp(min=1.0)

    # --- evaluation --------------------------------------------------------------------------
    def validation_start(self) -> None:
        self._scores, self._labels = [], []

    def validation_step(self, batch: dict) -> dict:
        x = batch["x"]
        s = self.anomaly_score(x)
        anomalous = self.anomaly_labels(batch)
        if anomalous is None:
            anomalous = torch.zeros_like(s, dtype=torch.bool)
        self._scores.append(s.detach().float().cpu())
        self._labels.append(anomalous.cpu())
        normal = (~anomalous).float()
        return {"loss": ((s * normal).sum(), normal.sum()), "score": (s.sum(), len(s))}

    def validation_end(self) -> dict[str, float]:
        scores = self.gather(torch.cat(self._scores) if self._scores else torch.zeros(0))
        labels = self.gather(torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.bool))
        self._scores, self._labels = [], []
        if not len(scores):
            return {}
        q = 1.0 - self.cfg.target_fpr
        normal_scores = scores[~labels]
        if self._trained_since_val and len(normal_scores):
            # Only a validation right after training moves the threshold: evaluating on test data
            # or re-evaluating a finished run must not re-tune it.
            self.threshold.fill_(normal_quantile(normal_scores, q))
            self._trained_since_val = False
        out: dict[str, float] = {"threshold": float(self.threshold)}
        if labels.any() and (~labels).any():
            pct = f"{100 * self.cfg.target_fpr:g}"
            out["auroc"] = auroc(scores, labels)
            # At the split's own (1 - target_fpr) normal quantile: the figure papers report.
            at_fpr = rates_at(scores, labels, normal_quantile(normal_scores, q))
            out[f"precision_at_{pct}fpr"] = at_fpr["precision"]
            out[f"recall_at_{pct}fpr"] = at_fpr["recall"]
            if not math.isnan(float(self.threshold)):
                # At the saved threshold (chosen on validation data): what a deployment would see.
                saved = rates_at(scores, labels, float(self.threshold))
                out.update({f"{k}_at_threshold": v for k, v in saved.items()})
        return out

    # --- use ---------------------------------------------------------------------------------
    def explain_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.anomaly_score(x)[:, None]  # which features make an input look anomalous

    def explain_names(self) -> list[str]:
        return ["anomaly_score"]

    @torch.no_grad()
    def predict_step(self, batch: dict) -> list[dict]:
        s = self.anomaly_score(batch["x"]).float().cpu()
        t = float(self.threshold)
        known = not math.isnan(t)
        return [{"anomaly_score": round(float(v), 6),
                 "threshold": round(t, 6) if known else None,
                 "anomalous": bool(v > t) if known else None} for v in s]

    def export_graph(self, batch):
        """The reconstruction and each input's anomaly score; the alarm threshold travels in the JSON."""
        def outputs(x):
            out = self.model(x)
            return self.reconstruction(out), self.scores(x, out)

        t = float(self.threshold)
        return ExportGraph(Outputs(outputs, model=self.model), (batch["x"],), ["x"], ["reconstruction", "score"],
                           "the reconstruction and the anomaly score (mean reconstruction error)", batch_only(["x"]),
                           postprocess={"threshold": None if math.isnan(t) else t, "round": 6,
                                        "answer": "anomaly_score: score; anomalous: score > threshold"})

    def generate(self, request: dict, run_dir) -> dict:
        raise StrataError("a 'reconstruct' run (autoencoder) does not sample new images; train a 'vae', 'gan' or "
                          "'diffusion' run for `strata generate`, or use `strata predict RUN_DIR INPUT` for "
                          "anomaly scores")
