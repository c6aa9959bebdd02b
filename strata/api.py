"""The Python API: train a run from a TOML file or dict, load a trained run.

    from strata.api import train, load_run
    result = train("recipes/mnist-cnn.toml", overrides=["trainer.max_epochs=1"])
    run = load_run(result.run_dir)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from strata.config import RunConfig, apply_overrides, build_config, load_config
from strata.errors import StrataError


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


@dataclass
class LoadedRun:
    cfg: RunConfig
    task: torch.nn.Module
    info: dict
    run_dir: Path
    checkpoint: str


def load_run(run_dir, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """A trained run from its folder: config.toml, info.json and checkpoints/best (else last)."""
    from strata.tasks import build_task
    from strata.train.checkpoint import check_compatible, load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StrataError(f"run folder {run_dir} does not exist; `strata train CONFIG --run-dir {run_dir}` creates one")
    if not (run_dir / "config.toml").is_file():
        raise StrataError(f"{run_dir} is not a strata run folder (no config.toml); give the folder that "
                          "`strata train` wrote")
    cfg = load_config(run_dir / "config.toml")
    info_path = run_dir / "info.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (ValueError, OSError) as e:
        raise StrataError(f"{info_path} is unreadable ({e}); it is written by `strata train`: restore it from the "
                          "run folder's backup or train again") from None
    ckpt = run_dir / "checkpoints" / which
    if not (ckpt / "manifest.json").exists():
        ckpt = run_dir / "checkpoints" / "last"
    task = build_task(cfg, info)
    weights, _, _ = load_checkpoint(ckpt)
    check_compatible(task.state_dict(), weights, str(ckpt))
    task.load_state_dict(weights)
    task.to(device).eval()
    return LoadedRun(cfg, task, info, run_dir, str(ckpt))
