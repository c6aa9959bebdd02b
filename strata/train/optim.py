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


@OPTIMIZERS.register("sgd")
def _sgd(groups, c: OptimizerConfig):
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)


@OPTIMIZERS.register("adam")
def _adam(groups, c: OptimizerConfig):
    return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps)


@OPTIMIZERS.register("adamw")
def _adamw(groups, c: OptimizerConfig):
    return torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups, c: OptimizerConfig):
    return torch.optim.RMSprop(groups, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum)


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    return OPTIMIZERS.get(cfg.name)(_param_groups(params, cfg.weight_decay), cfg)


# ---------------------------------------------------------------------------------------------
# Schedules. Step-based ones are LambdaLR multipliers evaluated once per optimiser step; "step" is
# per epoch; "plateau" reacts to the monitored validation metric.


class Schedule:
    """Uniform face for the trainer: step() after each optimiser step, epoch_end(), validated(value)."""

    def __init__(self, sched=None, per: str = "step"):
        self.sched = sched
        self.per = per

    def step(self):
        if self.per == "step":
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
