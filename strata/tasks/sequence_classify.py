"""Classification of variable-length sequences (a sentence's tokens, a recording's feature frames):
cross-entropy, accuracy.

Batches: {"tokens": (B, T) int ids or "x": (B, T, F) frames, "lengths": (B,), "y": (B,)}, padded
after each sequence's length. The model protocol: `model(inputs, lengths) -> logits (B, C)`
(rnn_classifier, transformer_classifier).

Optional SpecAugment for frames (Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method
for Automatic Speech Recognition"): during training, one band of up to `freq_mask` feature channels
and one span of up to `time_mask` frames are zeroed per example (features are standardised, so 0 is
the mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from strata.config import check
from strata.export.graph import BATCH, SEQUENCE, ExportGraph
from strata.models import build_model
from strata.tasks import TASKS
from strata.tasks.base import Task
from strata.tasks.classify import classes_postprocess, top_k_predictions


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, freq_mask: int, time_mask: int) -> torch.Tensor:
    """x: (B, T, F) -> x with one random frequency band and one random time span zeroed per row."""
    B, T, Fdim = x.shape
    dev = x.device
    keep = torch.ones_like(x, dtype=torch.bool)
    if freq_mask > 0:
        w = torch.randint(0, freq_mask + 1, (B, 1), device=dev)
        f0 = (torch.rand(B, 1, device=dev) * (Fdim - w + 1)).long()
        f = torch.arange(Fdim, device=dev)[None, :]  # (1, F)
        keep &= ~((f >= f0) & (f < f0 + w))[:, None, :]  # (B, 1, F)
    if time_mask > 0:
        w = torch.minimum(torch.randint(0, time_mask + 1, (B, 1), device=dev), lengths[:, None] // 4)
        t0 = (torch.rand(B, 1, device=dev) * (lengths[:, None] - w + 1)).long()
        t = torch.arange(T, device=dev)[None, :]  # (1, T)
        keep &= ~((t >= t0) & (t < t0 + w))[:, :, None]  # (B, T, 1)
    return x * keep


@dataclass(frozen=True)
class SequenceClassifyConfig:
    num_classes: int = 2  # from the data set
    label_smoothing: float = 0.0
    augment: Literal["none", "specaugment"] = "none"  # specaugment: frames only
    freq_mask: int = 8  # specaugment: widest masked band of feature channels
    time_mask: int = 20  # specaugment: longest masked span of frames (at most a quarter of the sequence)
    top_k: int = 3  # classes listed by predict

    def __post_init__(self):
        check(0 <= self.label_smoothing < 1, "[task] label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        check(self.freq_mask >= 0, "[task] freq_mask", f"must be >= 0, got {self.freq_mask}")
        check(self.time_mask >= 0, "[task] time_mask", f"must be >= 0, got {self.time_mask}")
        check(self.top_k >= 1, "[task] top_k", f"must be >= 1, got {self.top_k}")


@TASKS.register("sequence_classify")
class SequenceClassify(Task):
    Config = SequenceClassifyConfig
    input_key = "tokens"

    def __init__(self, cfg: SequenceClassifyConfig, model, info: dict):
        super().__init__(cfg, model, info)
        self.model = build_model(model, **info)
        self.class_names = info.get("class_names") or [str(i) for i in range(cfg.num_classes)]

    @staticmethod
    def inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs cut to the longest sequence in the batch, lengths)."""
        x = batch["tokens"] if "tokens" in batch else batch["x"]
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        T = max(1, int(lengths.max()))
        return x[:, :T], lengths.long()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, lengths)

    def training_step(self, batch):
        x, lengths = self.inputs(batch)
        if self.cfg.augment == "specaugment" and x.is_floating_point() and x.ndim == 3:
            x = spec_augment(x, lengths, self.cfg.freq_mask, self.cfg.time_mask)
        logits = self.model(x, lengths)
        return F.cross_entropy(logits.float(), batch["y"], label_smoothing=self.cfg.label_smoothing)

    def validation_step(self, batch):
        x, lengths = self.inputs(batch)
        logits = self.model(x, lengths).float()
        y = batch["y"]
        n = y.numel()
        return {"loss": (F.cross_entropy(logits, y, reduction="sum"), n), "acc": ((logits.argmax(-1) == y).sum(), n)}

    def example_input(self, batch):
        return self.inputs(batch)

    @torch.no_grad()
    def predict_step(self, batch):
        x, lengths = self.inputs(batch)
        return top_k_predictions(self.model(x, lengths), self.class_names, self.cfg.top_k)

    # --- explain: token ids (attributed at the embedding) or feature frames, with their lengths ----
    def explain_scores(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, lengths)

    def explain_names(self) -> list[str]:
        return self.class_names

    def explain_args(self, batch):
        x, lengths = self.inputs(batch)
        return x, (lengths,)

    def export_graph(self, batch):
        """Class logits from (inputs, lengths); the batch and the sequence length are dynamic. The
        same batch cut to half its length is checked too (a real input of another length)."""
        x, lengths = self.inputs(batch)
        model = self.model.for_export() if hasattr(self.model, "for_export") else self.model  # no packed sequences
        longest = getattr(getattr(model, "cfg", None), "context_size", None) or 4096
        x, lengths = x[:, :longest], lengths.clamp(max=longest)  # as the model crops longer inputs
        name = "tokens" if not x.is_floating_point() else "x"
        half = max(1, x.shape[1] // 2)
        return ExportGraph(model, (x, lengths), [name, "lengths"], ["logits"], "class logits",
                           {name: {0: BATCH, 1: SEQUENCE}, "lengths": {0: BATCH}},
                           sequence_range=(1, longest),
                           variants=[(x[:, :half], lengths.clamp(max=half))],
                           postprocess=classes_postprocess(self.class_names, self.cfg.top_k))
