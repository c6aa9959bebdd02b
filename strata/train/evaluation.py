"""One evaluation pass of a task over a split: what validation, `strata evaluate` and the test at the
end of a run share. Importing it does not import the training loop."""

from __future__ import annotations

import contextlib

import torch

from strata.train.distributed import Dist
from strata.train.loader import EpochBatches


class _Metrics:
    """Sums and counts kept on the device during an evaluation pass; one sync at the end."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, out: dict) -> None:
        for k, (s, c) in out.items():
            s = s.detach().double() if torch.is_tensor(s) else torch.tensor(float(s), dtype=torch.float64)
            c = c.detach().double() if torch.is_tensor(c) else torch.tensor(float(c), dtype=torch.float64, device=s.device)
            if k in self.sums:
                self.sums[k] += s
                self.counts[k] += c
            else:
                self.sums[k], self.counts[k] = s.clone(), c.clone()

    def compute(self, dist: Dist) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        flat = torch.stack([self.sums[k] for k in keys] + [self.counts[k].to(self.sums[k].device) for k in keys])
        flat = dist.sum_(flat).cpu()
        n = len(keys)
        return {k: float(flat[i] / flat[n + i]) if flat[n + i] > 0 else float("nan") for i, k in enumerate(keys)}


@torch.no_grad()
def evaluate(task, data, split: str, batch_size: int, device: torch.device, collate=None, dist: Dist | None = None,
             autocast=contextlib.nullcontext, max_batches: int = 0) -> dict[str, float]:
    """One pass of task.validation_step over `data` (its first max_batches batches, if > 0);
    metrics named '<split>/<metric>'."""
    dist = dist or Dist()
    batches = EpochBatches(data, batch_size, False, 0, device, dist.rank, dist.world, collate)
    was_training = task.training
    task.eval()
    task.validation_start()
    acc = _Metrics()
    with autocast():
        for i, batch in batches.epoch(0):
            if max_batches and i >= max_batches:
                break
            acc.add(task.validation_step(batch))
    out = acc.compute(dist)
    out.update(task.validation_end())
    task.train(was_training)
    return {f"{split}/{k}": v for k, v in out.items()}
