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
  Under torchrun (strata/train/strategy.py) each submodule that one optimiser steps (`self.model`, a
  GAN's generator) is wrapped in place by DistributedDataParallel or sharded by FSDP: compute the loss
  through its forward call (`self.model(x)`), where they hook in; attributes and methods still work.
- `configure_optimizers(cfg)` returns {name: (params, OptimizerConfig)}; one "main" by default.
- `validation_step(batch)` returns {metric: (sum, count)} tensors; the Trainer accumulates them
  on device, reduces them across processes, and logs sum / count under "val/<metric>".
  Metrics that are not means (AUROC, BLEU) are gathered by the task and returned by
  `validation_end()` as plain floats. Under torchrun each process validates a shard of the split;
  `validation_end()` runs on every process and joins the shards with `gather` / `gather_objects`
  (collectives: every process calls them in the same order), so the figure covers the whole split.
- `eval_module()` is the module used for evaluation and sampling (an EMA copy, for instance).
- `predict_step(batch)` returns one JSON-able dict per example.
- `export_graph(batch)` returns what `strata export` writes (strata/export/graph.py): a module of
  plain tensors, its example inputs computed from the real `batch`, names, dynamic dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist
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

    def __init__(self, cfg=None, model: "ComponentConfig | None" = None, info: dict | None = None):
        """cfg: this task's Config; model: the [model] section (name + options), which the task
        builds with strata.models.build_model(model, **facts from info). A Task written in a user's
        own file (strata.fit(MyTask(...), data)) builds its modules itself and calls
        super().__init__() with no arguments; `info` (the data's facts) is set before training."""
        super().__init__()
        self.cfg = cfg
        self.info = info or {}

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

    # --- joining the processes' shards in validation_end (no-ops in one process) -------------
    @staticmethod
    def world_size() -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @staticmethod
    def gather(t: torch.Tensor) -> torch.Tensor:
        """Every process's `t` (first dimension may differ) concatenated in rank order."""
        if Task.world_size() == 1:
            return t
        # nccl gathers only CUDA tensors, gloo any: gather on the backend's device, return on t's.
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        n = torch.tensor([t.shape[0]], device=on)
        sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, n)
        m = int(max(s.item() for s in sizes))
        kind, home = t.dtype, t.device
        t = t.to(torch.uint8) if kind == torch.bool else t  # gloo gathers no bool tensors
        padded = torch.cat([t, t.new_zeros((m - t.shape[0], *t.shape[1:]))]).to(n.device)
        out = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(out, padded)
        return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)]).to(home, kind)

    @staticmethod
    def gather_objects(items: list) -> list:
        """Every process's list (of picklable items) concatenated in rank order."""
        if Task.world_size() == 1:
            return items
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    # --- use ------------------------------------------------------------------------------
    def predict_step(self, batch: dict) -> list[dict[str, Any]]:
        raise NotImplementedError(f"task '{type(self).__name__}' has no predict")

    # `strata explain`: scores differentiable in the input, and their names.
    def explain_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) scores (class logits, predicted numbers, an anomaly score, next-token logits) computed from
        inputs x and the further arguments `explain_args` gives (sequence lengths)."""
        from strata.errors import StrataError

        raise StrataError(f"`strata explain` attributes the outputs of classify, sequence_classify, language_model, "
                          f"regress and reconstruct runs; this run's task ({type(self).__name__}) has no scores "
                          f"to explain yet")

    def explain_names(self) -> list[str]:
        return []

    def explain_inputs(self, inputs: list[str], spec, info: dict, run_dir) -> dict:
        """A user's inputs as a batch for `strata explain`: by default as the data set encodes them
        for predict (`spec.encode_inputs`)."""
        return spec.encode_inputs(list(inputs), info, run_dir)

    def explain_args(self, batch: dict) -> tuple[torch.Tensor, tuple]:
        """(the input attributions are taken on, further arguments of explain_scores such as lengths)."""
        return batch[self.input_key], ()

    def export_graph(self, batch: dict):
        """What `strata export` writes for this task: an ExportGraph (strata/export/graph.py) whose
        example inputs come from `batch`, a real batch of the run's data. Tasks that have none say why."""
        from strata.errors import StrataError

        raise StrataError(f"this run's task ({type(self).__name__}) cannot be exported: {self.export_refusal}")

    # Why `export_graph` has nothing to write, for tasks that do not override it.
    export_refusal = ("it has no single forward pass from inputs to an answer that a standard file can hold; "
                      "use the run with strata itself (`strata predict`, `strata serve`)")

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

    def recommend(self, request: dict, run_dir) -> dict:
        """`strata predict RUN_DIR --user U [--item I] [--top N]`: request holds user, and item or top
        where given. Return a JSON-able dict (one item's score, or the best items the user did not rate)."""
        from strata.errors import StrataError

        raise StrataError(f"--user / --item / --top need a rating or ranking run; this run's task "
                          f"({type(self).__name__}) predicts from inputs: strata predict RUN_DIR INPUT...")

    def evaluate_report(self, bundle, split: str, run_dir) -> dict[str, float]:
        """Extra figures for `strata evaluate` beyond the validation metrics (Frechet distance, ...)."""
        return {}

    # Modules whose layers `strata summary` lists.
    def summary_modules(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.named_children()}
