"""Exact resume: a run killed with SIGKILL in the middle of an epoch, then resumed, ends with the
same weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = """
name = "resume-test"
[data]
name = "digits"
batch_size = 32
[model]
name = "cnn"
channels = [8, 16]
fc_hidden = 32
dropout = 0.2
[task]
name = "classify"
augment = "shift"
shift_pixels = 1
[optimizer]
name = "adamw"
lr = 0.003
[schedule]
name = "cosine"
warmup_steps = 10
[trainer]
max_epochs = 12
seed = 7
checkpoint_every_n_steps = 5
deterministic = true
progress = "off"
"""
STEPS_PER_EPOCH = 38  # 1213 training digits / 32


def _cmd(cfg: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "strata", "train", str(cfg), "--run-dir", str(run_dir), *extra]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same thread count in every run: same floating-point reductions
    return env


def _sha(run_dir: Path) -> str:
    return json.loads((run_dir / "summary.json").read_text())["weights_sha256"]


def check_sigkill_then_resume_is_bit_identical(cfg: Path, tmp_path: Path, _cmd=_cmd,
                                               steps_per_epoch: int = STEPS_PER_EPOCH) -> None:
    """Train `cfg` (batch 32 on digits, checkpoints every 5 steps) uninterrupted; train it again,
    SIGKILL it just after a checkpoint in the first half of an epoch, resume: the same weights.
    `_cmd(cfg, run_dir, *extra)` is the command line (extra: "--resume"), `strata train` by default;
    SIGKILL reaches its whole process group (torchrun and its workers)."""
    ref = tmp_path / "ref"
    subprocess.run(_cmd(cfg, ref), check=True, env=_env(), capture_output=True, timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cfg, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    manifest = run / "checkpoints" / "last" / "manifest.json"
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            step = int(json.loads(manifest.read_text())["current"]["model"].split("-")[1].split(".")[0])
        except (OSError, ValueError, KeyError):
            step = 0
        # a checkpoint in the first half of an epoch, after the first epoch: kill right there
        if step > steps_per_epoch and 0 < step % steps_per_epoch < steps_per_epoch // 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    assert not (run / "summary.json").exists()

    state_file = json.loads(manifest.read_text())["current"]["state"]
    state = torch.load(run / "checkpoints" / "last" / state_file, weights_only=True)
    assert 0 < state["batch_in_epoch"] < steps_per_epoch  # the resume really starts mid-epoch

    done = subprocess.run(_cmd(cfg, run, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _sha(run) == _sha(ref)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG)
    check_sigkill_then_resume_is_bit_identical(cfg, tmp_path)


def test_a_run_stopped_at_max_steps_mid_epoch_resumes_as_the_straight_run(tmp_path):
    # max_steps ends a run in the middle of an epoch: the epoch stays open in its checkpoint, and a resume
    # with a larger max_steps continues with the next batch of the same order (not a new epoch's order)
    from strata.api import train
    from strata.run_folder import RunFolder
    from strata.train.checkpoint import load_checkpoint

    cfg = {"name": "steps", "data": {"name": "digits", "batch_size": 32, "limit": 300},
           "model": {"name": "mlp", "hidden": [32], "dropout": 0.2}, "task": {"name": "classify"},
           "optimizer": {"name": "adamw", "lr": 0.01},
           "trainer": {"max_epochs": 10, "seed": 5, "progress": "off", "sanity_val_batches": 0}}
    straight = train(cfg, ["trainer.max_steps=27"], run_dir=tmp_path / "straight")
    split = train(cfg, ["trainer.max_steps=14"], run_dir=tmp_path / "split")
    per_epoch = 10  # 300 training digits in batches of 32
    _, state, _ = load_checkpoint(RunFolder(tmp_path / "split").checkpoint("last"))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (14, 1, 14 - per_epoch)
    assert split.summary["epochs"] == 1  # epochs completed
    resumed = train(cfg, ["trainer.max_steps=27"], run_dir=tmp_path / "split", resume=True)
    assert resumed.summary["steps"] == straight.summary["steps"] == 27
    assert resumed.summary["weights_sha256"] == straight.summary["weights_sha256"]
