"""Exponential moving average of weights (Polyak averaging), for evaluation and sampling.

    shadow <- decay * shadow + (1 - decay) * weights      after every optimiser step

The shadow copy is a submodule of the task, so it travels in every checkpoint; a task updates it
from `after_optimizer_step` and returns it from `eval_module()`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Early on, average over the steps seen so far: decay_t = min(decay, (1 + t) / (10 + t)).
        n = float(self.updates)
        d = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()  # the average is never in training mode
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
