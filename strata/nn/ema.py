"""Exponential moving average of weights (Polyak averaging), for evaluation and sampling.

    shadow <- d * shadow + (1 - d) * weights      after every optimiser step, d = min(decay, (1 + n) / (10 + n))

with n the number of updates so far: early on the average spans the steps seen, so it is not
dominated by the random initial weights. A task keeps the shadow copy as a child module (so every
checkpoint carries it), updates it from `after_optimizer_step` and returns it from `eval_module()`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode, to hold the average."""
    return copy.deepcopy(model).requires_grad_(False).eval()


@torch.no_grad()
def ema_update_(shadow: nn.Module, model: nn.Module, decay: float, updates: int | torch.Tensor) -> None:
    """One update of `shadow` towards `model` (same architecture); buffers are copied as they are.
    `updates` may be the task's 0-d count buffer itself: the decay is then worked out on its device,
    so a GPU run does not wait for the host to read the count at every step."""
    if isinstance(updates, torch.Tensor):
        n = updates.to(torch.float32 if updates.device.type == "mps" else torch.float64)
        weight = 1 - ((1 + n) / (10 + n)).clamp(max=decay)
    else:
        weight = 1 - min(decay, (1 + updates) / (10 + updates))
    torch._foreach_lerp_(list(shadow.parameters()), [p.detach() for p in model.parameters()], weight)
    for b_shadow, b in zip(shadow.buffers(), model.buffers()):
        b_shadow.copy_(b)
