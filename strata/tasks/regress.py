"""Supervised regression of fixed-size inputs (table rows, arrays, images): predict numbers.

Batches: {"x": (B, ...) inputs, "y": (B,) or (B, K) float targets}.

The model's output width (its `num_classes`) is the number of targets. Targets are standardised
with the training split's mean and standard deviation (from the data set's info, saved with the
weights), so one learning rate suits a target in millimetres or in millions; the loss is computed
on that scale, and every reported figure and prediction is in the target's own units:
mse, rmse, mae, and r2 = 1 - SSE / SST (the share of the split's variance the model explains;
0 for always predicting the split's mean).

Forecasting windows (x: (B, hours, features)) may set `baseline = "last"`: the model sees each
window minus its last hour and predicts the change from the last observed value of each target
(NLinear; Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023), so an
untrained model starts at the persistence forecast. The data set names the input column of each
target (info["target_input_index"]) and the inputs' standardisation (input_mean, input_std).
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
from strata.tasks.base import Task

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.smooth_l1_loss}


@dataclass(frozen=True)
class RegressConfig:
    num_outputs: int = 1  # from the data set
    loss: Literal["mse", "l1", "huber"] = "mse"  # on standardised targets; huber: smooth L1 with beta 1
    standardize: bool = True  # false: fit the raw targets
    baseline: Literal["none", "last"] = "none"  # "last": forecast the change from the last observed value

    def __post_init__(self):
        check(self.num_outputs >= 1, "[task] num_outputs", f"must be >= 1, got {self.num_outputs}")


@TASKS.register("regress")
class Regress(Task):
    Config = RegressConfig

    def __init__(self, cfg: RegressConfig, model, info: dict):
        super().__init__(cfg, model, info)
        if "num_classes" in info and "num_outputs" not in info:
            raise StrataError(f"task 'regress' predicts numbers, but this data set has class labels "
                              f"({info['num_classes']} classes); use [task] name = \"classify\", or for a CSV "
                              "table set [data] target_kind = \"regression\"")
        k = cfg.num_outputs
        self.model = build_model(model, **{**info, "num_classes": k})
        mean = info.get("target_mean", [0.0] * k) if cfg.standardize else [0.0] * k
        std = info.get("target_std", [1.0] * k) if cfg.standardize else [1.0] * k
        if len(mean) != k or len(std) != k:
            raise StrataError(f"the data set states target statistics for {len(mean)} outputs, but [task] "
                              f"num_outputs = {k}; leave num_outputs out to take it from the data")
        self.register_buffer("y_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(std, dtype=torch.float32))
        if cfg.baseline == "last":
            need = ("target_input_index", "input_mean", "input_std")
            if any(k not in info for k in need):
                raise StrataError("[task] baseline = \"last\" needs forecasting windows whose data set names each "
                                  "target's input column (such as [data] name = \"ett\"); drop baseline")
            idx = torch.tensor(info["target_input_index"], dtype=torch.long)
            if len(idx) != k:
                raise StrataError(f"the data set names input columns for {len(idx)} targets, but there are {k}")
            in_mean = torch.tensor(info["input_mean"], dtype=torch.float32)[idx]
            in_std = torch.tensor(info["input_std"], dtype=torch.float32)[idx]
            # last standardised input -> its value in units -> standardised like the target
            self.register_buffer("anchor_index", idx, persistent=False)
            self.register_buffer("anchor_scale", in_std / self.y_std, persistent=False)
            self.register_buffer("anchor_shift", (in_mean - self.y_mean) / self.y_std, persistent=False)
        self._sums: torch.Tensor | None = None

    def _standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output, (B, K), on the standardised target scale."""
        if self.cfg.baseline == "none":
            return self.model(x).float()
        last = x[:, -1:, :]  # (B, 1, F): the last observed hour
        anchor = last[:, 0, self.anchor_index].float() * self.anchor_scale + self.anchor_shift  # (B, K)
        return self.model(x - last).float() + anchor

    def _pred_and_target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) standardised prediction and target."""
        out = self._standardised(batch["x"])
        y = batch["y"].float().reshape(len(out), -1)
        if out.shape != y.shape:
            raise StrataError(f"the model gives {out.shape[1]} outputs per example but the data has {y.shape[1]} "
                              "targets; leave [model] num_classes out so it follows the data")
        return out, (y - self.y_mean) / self.y_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the target's units, (B, K)."""
        return self._standardised(x) * self.y_std + self.y_mean

    def training_step(self, batch):
        out, y = self._pred_and_target(batch)
        return LOSSES[self.cfg.loss](out, y)

    # --- evaluation --------------------------------------------------------------------------
    def validation_start(self) -> None:
        self._sums = None

    def validation_step(self, batch):
        out, y = self._pred_and_target(batch)
        n = y.numel()
        loss = LOSSES[self.cfg.loss](out, y, reduction="sum")
        err = (out - y) * self.y_std  # in units
        y_units = y * self.y_std + self.y_mean
        # Per output: SSE, sum y, sum y^2, count; for r2 and rmse over the whole split.
        sums = torch.stack([err.pow(2).sum(0), y_units.sum(0), y_units.pow(2).sum(0),
                            torch.full_like(err[0], len(err))]).double()
        self._sums = sums if self._sums is None else self._sums + sums
        return {"loss": (loss, n), "mse": (err.pow(2).sum(), n), "mae": (err.abs().sum(), n)}

    def validation_end(self) -> dict[str, float]:
        k = self.cfg.num_outputs
        local = self._sums if self._sums is not None else torch.zeros(4, k, dtype=torch.float64)
        sse, sy, sy2, n = self.gather(local.cpu()[None]).sum(0)  # every process's shard
        self._sums = None
        if n.sum() == 0:
            return {}
        sst = sy2 - sy.pow(2) / n.clamp(min=1)
        r2 = 1 - sse / sst.clamp(min=1e-12)
        return {"rmse": float((sse.sum() / n.sum()).sqrt()), "r2": float(r2.mean())}

    # --- use ---------------------------------------------------------------------------------
    def explain_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def explain_names(self) -> list[str]:
        return [f"output {i}" for i in range(self.cfg.num_outputs)]

    def export_graph(self, batch):
        """Predictions in the target's units (the standardisation and any baseline inside the graph)."""
        return ExportGraph(self, (batch["x"],), ["x"], ["predictions"], "predictions in the target's units",
                           batch_only(["x"]), postprocess={
                               "answer": "prediction: the number (a list when there are several outputs), in the "
                                         "target's units (the standardisation is undone inside the graph)",
                               "round": 6, "outputs": self.cfg.num_outputs})

    @torch.no_grad()
    def predict_step(self, batch):
        pred = self(batch["x"]).cpu()
        if self.cfg.num_outputs == 1:
            return [{"prediction": round(float(v), 6)} for v in pred[:, 0]]
        return [{"prediction": [round(float(v), 6) for v in row]} for row in pred]
