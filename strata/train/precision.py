"""[trainer] precision: fp32, bf16 autocast, or fp16 autocast with a gradient scaler (Micikevicius et
al. 2018, loss scaling). The loop calls the same methods whatever the precision; only fp16 scales."""

from __future__ import annotations

import contextlib

import torch


class Precision:
    def __init__(self, name: str, device: torch.device):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.plain = dtype is None  # fp32: no autocast, no scaler (nothing between backward and step)
        # fp16 gradients underflow: backpropagate loss * s, unscale before clipping and stepping, and
        # adapt s (halve on inf / nan, skipping that step; grow after a run of finite steps)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def backward(self, loss: torch.Tensor, inputs=None) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward(inputs=inputs)

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        """The true gradients in .grad (before clipping them)."""
        if self.scaler:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(opt)
        else:
            opt.step()

    def update(self) -> None:
        """After every optimiser of a step has stepped."""
        if self.scaler:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
