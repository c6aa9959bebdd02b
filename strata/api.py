"""The Python API: train a run from a TOML file or dict, load a trained run.

    from strata.api import train, load_run
    result = train("recipes/mnist-cnn.toml", overrides=["trainer.max_epochs=1"])
    run = load_run(result.run_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from strata.config import RunConfig, apply_overrides, build_config, load_config
from strata.run_folder import RunFolder


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    task: torch.nn.Module


def resolve_config(config, overrides=()) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            return build_config(apply_overrides(config.to_dict(), list(overrides)))
        return config
    if isinstance(config, dict):
        import copy

        return build_config(apply_overrides(copy.deepcopy(config), list(overrides)))
    return load_config(config, overrides)


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
