"""The same command under torchrun: 2 CPU processes (gloo) reach the weights of one process that
sees the same global batches, within float tolerance."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from strata.train.checkpoint import load_checkpoint

CONFIG = """
name = "ddp-test"
[data]
name = "digits"
batch_size = {batch}
limit = 1184
[model]
name = "mlp"
hidden = [64, 64]
[task]
name = "classify"
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[trainer]
max_epochs = 2
seed = 3
progress = "lines"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_two_processes_match_one_process_over_the_same_global_batch(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_cfg, two_cfg = tmp_path / "one.toml", tmp_path / "two.toml"
    one_cfg.write_text(CONFIG.format(batch=32))
    two_cfg.write_text(CONFIG.format(batch=16))  # per process: 2 x 16 = the same global batch of 32

    _run([sys.executable, "-m", "strata", "train", str(one_cfg), "--run-dir", str(tmp_path / "one"),
          "--device", "cpu"], env)
    out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "strata", "train", str(two_cfg),
                "--run-dir", str(tmp_path / "two"), "--device", "cpu"], env)
    assert out.stdout.count("training ddp-test") == 1  # only rank 0 logs

    w1, _, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "last")
    w2, s2, _ = load_checkpoint(tmp_path / "two" / "checkpoints" / "last")
    assert s2["step"] == 2 * 37  # 1184 / 32 global batches per epoch
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # and training did move the weights
    assert not torch.allclose(w1["model.head.weight"], torch.zeros_like(w1["model.head.weight"]))
