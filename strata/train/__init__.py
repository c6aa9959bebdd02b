"""Trainer, checkpoints, optimisers and schedules, progress, distributed."""

from strata.train.trainer import Interrupted, Trainer

__all__ = ["Trainer", "Interrupted"]
