"""Trainer, callbacks, checkpoints, optimisers and schedules, progress, distributed.

The Trainer is imported on first use (`strata.train.Trainer`), so that the modules inference needs
(loader, evaluation, checkpoint) load without the training loop.
"""

from strata.errors import Interrupted
from strata.train.callbacks import Callback

__all__ = ["Trainer", "Callback", "Interrupted"]


def __getattr__(name):
    if name == "Trainer":
        from strata.train.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'strata.train' has no attribute {name!r}")
