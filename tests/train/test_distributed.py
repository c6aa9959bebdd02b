"""The same command under torchrun: 2 CPU processes (gloo) reach the weights of one process that
sees the same global batches, within float tolerance; a signal to one of them stops both at the
same step with `last` saved."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from strata.train.checkpoint import load_checkpoint
from strata.train.trainer import STOP_CHECK_EVERY

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


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (children of `parent` with RANK set)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and "RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_resume_finishes(tmp_path: Path):
    """SIGTERM reaches rank 1 only: the ranks agree at the next check (every STOP_CHECK_EVERY steps),
    rank 0 saves `last` there, every process exits (none is left waiting in a collective), and
    --resume under torchrun finishes the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(CONFIG.format(batch=16).replace("max_epochs = 2", "max_epochs = 4\ncheckpoint_every_n_steps = 5"))
    run = tmp_path / "run"

    def torchrun(*extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "strata", "train", str(cfg),
                "--run-dir", str(run), "--device", "cpu", *extra]

    proc = subprocess.Popen(torchrun(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    manifest = run / "checkpoints" / "last" / "manifest.json"
    deadline = time.monotonic() + 240
    try:
        while not manifest.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        workers = _workers(proc.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)  # a hang here: a rank stayed in a collective
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, out
    _, state, _ = load_checkpoint(run / "checkpoints" / "last")
    assert 0 < state["step"] < 4 * 37
    assert state["step"] % STOP_CHECK_EVERY == 0 or state["batch_in_epoch"] == 0, state["step"]
    assert not (run / "summary.json").exists()

    _run(torchrun("--resume"), env)
    _, state, _ = load_checkpoint(run / "checkpoints" / "last")
    assert state["step"] == 4 * 37 and (run / "summary.json").exists()
