"""The Python API: train a run from a TOML file or dict, load a trained run.

    from strata.api import train, load_run
    result = train("recipes/mnist-cnn.toml", overrides=["trainer.max_epochs=1"])
    run = load_run(result.run_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from strata.build import resolve_config

__all__ = ["train", "load_run", "resolve_config", "RunResult"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    task: torch.nn.Module


def train(config, overrides=(), run_dir=None, device=None, resume=False, progress=None) -> RunResult:
    from strata.train import Trainer

    cfg = resolve_config(config, overrides)
    trainer = Trainer(cfg, run_dir=run_dir, device=device, resume=resume, progress=progress)
    try:
        summary = trainer.fit()
    finally:
        trainer.dist.teardown()
    return RunResult(trainer.run_dir, summary, trainer.task)


def load_run(run_dir, which: str = "best", device: str | torch.device = "cpu"):
    """A trained run from its folder: config.toml, info.json and checkpoints/best (else last); the
    same Run that strata.load gives (cfg, task, info, run_dir, checkpoint, predict, evaluate)."""
    from strata.fitting import load

    return load(run_dir, which=which, device=device)
