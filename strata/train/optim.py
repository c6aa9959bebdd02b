"""Optimisers and learning-rate schedules, built from the [optimizer] and [schedule] sections."""

from __future__ import annotations

import math

import torch
from torch import nn

from strata.config import OptimizerConfig, ScheduleConfig
from strata.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay matrices and kernels only; biases and norm gains (1-d tensors) are not decayed."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fusable(params: list[nn.Parameter]) -> bool:
    """torch's fused kernels update every tensor of a group in one pass; it uses them by default on
    neither CPU (a per-tensor loop of ~6 element-wise kernels there) nor CUDA (foreach). Plain float
    tensors on the CPU or a CUDA device qualify; sharded (DTensor) parameters keep torch's choice."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                and type(p.data) is torch.Tensor for p in params)


@OPTIMIZERS.register("sgd")
def _sgd(groups, c: OptimizerConfig, fused: bool):
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, fused=fused or None)


@OPTIMIZERS.register("adam")
def _adam(groups, c: OptimizerConfig, fused: bool):
    return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, fused=fused or None)


@OPTIMIZERS.register("adamw")
def _adamw(groups, c: OptimizerConfig, fused: bool):
    return torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, fused=fused or None)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups, c: OptimizerConfig, fused: bool):  # torch has no fused RMSprop
    return torch.optim.RMSprop(groups, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum)


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The [optimizer] over `params`, with torch's fused kernel where the parameters allow it (on this
    project's CPU a step of the MNIST MLP took 35.6 ms against 44.2 ms with torch's default AdamW:
    benchmarks/peers.py, plain-same-opt against plain)."""
    params = [p for p in params if p.requires_grad]
    return OPTIMIZERS.get(cfg.name)(_param_groups(params, cfg.weight_decay), cfg, _fusable(params))


# ---------------------------------------------------------------------------------------------
# Schedules. Step-based ones are LambdaLR multipliers evaluated once per optimiser step; "step" is
# per epoch; "plateau" reacts to the monitored validation metric.


class Schedule:
    """Uniform face for the trainer: step() after each optimiser step, epoch_end(), validated(value)."""

    def __init__(self, sched=None, per: str = "step"):
        self.sched = sched
        self.per = per

    @property
    def each_step(self) -> bool:
        """Whether step() does anything: a learning rate that changes every optimiser step."""
        return self.per == "step" and self.sched is not None

    def step(self):
        if self.each_step:
            self.sched.step()

    def epoch_end(self):
        if self.per == "epoch":
            self.sched.step()

    def validated(self, value: float):
        if self.per == "metric":
            self.sched.step(value)

    def state_dict(self):
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state):
        if self.sched is not None and state:
            self.sched.load_state_dict(state)


def _warm(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


@SCHEDULES.register("constant")
def _constant(opt, c: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str):
    if c.warmup_steps == 0:  # nothing to step: no scheduler, and none of its cost on every step
        return Schedule(None)
    return Schedule(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warm(s, c.warmup_steps)))


@SCHEDULES.register("cosine")
def _cosine(opt, c: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str):
    def f(s: int) -> float:
        if s < c.warmup_steps:
            return _warm(s, c.warmup_steps)
        t = min(1.0, (s - c.warmup_steps) / max(1, total_steps - c.warmup_steps))
        # lr = min + (1 - min) * (1 + cos(pi t)) / 2
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return Schedule(torch.optim.lr_scheduler.LambdaLR(opt, f))


@SCHEDULES.register("onecycle")
def _onecycle(opt, c: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str):
    max_lr = [g["lr"] for g in opt.param_groups]
    n = max(total_steps, 3)
    # torch places the peak at step pct_start * n - 1 and divides by each phase's length: a run of a few
    # steps (pct_start * n == 1, say 4 steps at 0.25) would divide by zero, so each phase keeps >= 1.5 steps.
    pct = min(max(c.pct_start, 1.5 / n), (n - 1.5) / n)
    return Schedule(torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=n, pct_start=pct))


@SCHEDULES.register("step")
def _step(opt, c: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str):
    return Schedule(torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma), per="epoch")


@SCHEDULES.register("plateau")
def _plateau(opt, c: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str):
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=c.factor, patience=c.patience,
                                                               min_lr=c.min_lr), per="metric")


def build_schedule(opt, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int, mode: str) -> Schedule:
    return SCHEDULES.get(cfg.name)(opt, cfg, total_steps, steps_per_epoch, mode)
