"""The Task: what is optimised and measured. It owns its models, its step(s), losses and metrics.

The Trainer only ever calls the methods below, so a new family (GAN, diffusion, seq2seq) arrives as
a new Task file, never as a branch in the training loop (the LightningModule idea).

Contract
- `training_step(batch)` yields one `Loss(optimizer, value, logs)` per optimiser phase. The Trainer
  backpropagates each value, and on an accumulation boundary clips and steps that optimiser, then
  calls `after_optimizer_step(name)`. With several optimisers, a phase's backward pass fills only
  the gradients of that phase's optimiser, so a generator loss that flows through the discriminator
  never touches the discriminator's gradients (and a discriminator step never moves the generator).
  Returning a bare tensor instead means one phase on the optimiser "main".
- `configure_optimizers(cfg)` returns {name: (params, OptimizerConfig)}; one "main" by default.
- `validation_step(batch)` returns {metric: (sum, count)} tensors; the Trainer accumulates them
  on device, reduces them across processes, and logs sum / count under "val/<metric>".
  Metrics that are not means (AUROC, BLEU) are gathered by the task and returned by
  `validation_end()` as plain floats.
- `eval_module()` is the module used for evaluation and sampling (an EMA copy, for instance).
- `predict_step(batch)` returns one JSON-able dict per example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from strata.config import ComponentConfig, OptimizerConfig


@dataclass
class Loss:
    optimizer: str
    value: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(nn.Module):
    """Base class. Subclasses set `Config` (a frozen dataclass) and build their modules in __init__."""

    Config: type = None
    # Keys of the batch that hold the model input, for summaries and predict.
    input_key: str = "x"

    def __init__(self, cfg, model: "ComponentConfig", info: dict):
        """cfg: this task's Config; model: the [model] section (name + options), which the task
        builds with strata.models.build_model(model.name, model.options, **facts from info)."""
        super().__init__()
        self.cfg = cfg
        self.info = info

    # --- training -------------------------------------------------------------------------
    def configure_optimizers(self, cfg: OptimizerConfig) -> dict[str, tuple[list[nn.Parameter], OptimizerConfig]]:
        return {"main": ([p for p in self.parameters() if p.requires_grad], cfg)}

    def training_step(self, batch: dict) -> Iterator[Loss] | torch.Tensor:
        raise NotImplementedError

    def after_optimizer_step(self, name: str) -> None:
        """Called after optimiser `name` stepped: EMA updates, weight clipping, ..."""

    # --- evaluation -----------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor | int]]:
        raise NotImplementedError

    def validation_start(self) -> None:
        """Reset any state gathered across validation batches."""

    def validation_end(self) -> dict[str, float]:
        return {}

    def eval_module(self) -> nn.Module:
        return self

    # --- use ------------------------------------------------------------------------------
    def predict_step(self, batch: dict) -> list[dict[str, Any]]:
        raise NotImplementedError(f"task '{type(self).__name__}' has no predict")

    def example_input(self, batch: dict) -> Any:
        """The model input in a batch, for `strata summary`."""
        return batch[self.input_key]

    def generate(self, request: dict, run_dir) -> dict:
        """`strata generate RUN_DIR ...`: request holds only the options the user gave (prompt,
        max_new_tokens, temperature, top_k, top_p, seed, n, class_, steps, guidance, out, out_dir,
        interpolate). Validate them (StrataError naming the option and the fix) and return a
        JSON-able dict of what was produced."""
        from strata.errors import StrataError

        raise StrataError(f"this run's task ({type(self).__name__}) does not generate; "
                          "`strata generate` needs a language-model, seq2seq or generative-image run")

    def evaluate_report(self, bundle, split: str, run_dir) -> dict[str, float]:
        """Extra figures for `strata evaluate` beyond the validation metrics (Frechet distance, ...)."""
        return {}

    # Modules whose layers `strata summary` lists.
    def summary_modules(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.named_children()}
