"""The same command under torchrun: 2 CPU processes (gloo) reach the weights of one process that
sees the same global batches, within float tolerance; a signal to one of them stops both at the
same step with `last` saved."""

from __future__ import annotations

import json
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


def check_two_processes_match_one(config: str, tmp_path: Path, one: dict | None = None,
                                  two: dict | None = None) -> dict:
    """Train `config` (a {batch} placeholder; 1184 digits, 2 epochs) in one process at batch 32 and
    under torchrun in 2 processes at 16 each: the same weights within float tolerance. Returns them.
    `one` / `two`: the placeholders' values for each run instead (the same global batch of 32)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_cfg, two_cfg = tmp_path / "one.toml", tmp_path / "two.toml"
    one_cfg.write_text(config.format(**(one or {"batch": 32})))
    two_cfg.write_text(config.format(**(two or {"batch": 16})))  # per process: 2 x 16 = the same global batch

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
    return w1


def test_two_processes_match_one_process_over_the_same_global_batch(tmp_path: Path):
    w1 = check_two_processes_match_one(CONFIG, tmp_path)
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


SHARDED_EVAL = """
import json, sys
import torch
from strata.build import build_config
from strata.data import load_data
from strata.tasks import build_task
from strata.train.distributed import Dist
from strata.train.trainer import evaluate

cfg = build_config({"data": {"name": "digits"}, "model": {"name": "autoencoder", "kind": "mlp", "latent": 8},
                    "task": {"name": "reconstruct", "anomaly_classes": [0]}})
bundle = load_data(cfg.data)
torch.manual_seed(0)
task = build_task(cfg, bundle.info)  # the same untrained weights in every process
task._trained_since_val = True  # set the threshold from this validation, as after training
d = Dist()
d.setup(torch.device("cpu"))
out = evaluate(task, bundle.val, "val", 32, torch.device("cpu"), bundle.collate, d)
out["threshold_buffer"] = float(task.threshold)
out["objects"] = task.gather_objects([d.rank, "r%d" % d.rank])
out["bools"] = task.gather(torch.tensor([d.rank == 1] * (d.rank + 1))).tolist()
if d.is_main:
    open(sys.argv[1], "w").write(json.dumps(out))
d.teardown()
"""


def test_validation_end_metrics_cover_every_process_shard(tmp_path: Path):
    """AUROC, precision at 1 % FPR and the alarm threshold from two processes, each validating half
    of the split, equal those of one process over the whole split (not rank 0's half)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "sharded_eval.py"
    script.write_text(SHARDED_EVAL)
    _run([sys.executable, str(script), str(tmp_path / "one.json")], env)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path / "two.json")], env)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["objects"] == [0, "r0"] and one["bools"] == [False]
    assert two["objects"] == [0, "r0", 1, "r1"] and two["bools"] == [False, True, True]
    for k in ("val/auroc", "val/precision_at_1fpr", "val/recall_at_1fpr", "val/threshold", "threshold_buffer",
              "val/loss"):
        assert two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k
    assert 0.0 < one["val/auroc"] < 1.0


def test_gradient_accumulation_under_ddp_matches_one_process(tmp_path: Path):
    """2 processes x batch 8 x 2 micro-batches (no_sync on the first) reach the weights of one
    process at batch 32: the same 74 optimiser steps over the same examples."""
    config = CONFIG.replace("seed = 3", "seed = 3\ngrad_accum = {accum}")
    check_two_processes_match_one(config, tmp_path, one={"batch": 32, "accum": 1}, two={"batch": 8, "accum": 2})


GAN_UNDER_DDP = """
import json, sys
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from strata.build import build_config
from strata.train import Callback
from strata.train.checkpoint import weights_sha256
from strata.train.strategy import Replicated
from strata.train.trainer import Trainer

calls = {}


def per_net(trainer):
    weights = trainer.strategy.full_state_dict(trainer.task)
    return {net: weights_sha256({k: v for k, v in weights.items() if k.startswith(net)})
            for net in ("model.generator.", "model.discriminator.")}


class CountBucketAllReduces(Callback):
    def on_fit_start(self, trainer):
        self.initial = per_net(trainer)
        for name, unit, _ in trainer.strategy.units:
            assert isinstance(unit, Replicated) == (trainer.strategy.name == "ddp"), type(unit)
            if trainer.strategy.name != "ddp":
                continue
            calls[name] = 0

            def hook(state, bucket, name=name):
                calls[name] += 1
                return allreduce_hook(state, bucket)

            unit.register_comm_hook(None, hook)


cfg = build_config({"name": "gan-ddp", "data": {"name": "digits", "batch_size": 16, "limit": 256},
                    "model": {"name": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8},
                    "task": {"name": "gan"}, "optimizer": {"name": "adam", "lr": 0.001},
                    "trainer": {"max_epochs": 1, "grad_accum": 2, "seed": 5, "progress": "off",
                                "strategy": sys.argv[3]}})
counter = CountBucketAllReduces()
trainer = Trainer(cfg, run_dir=sys.argv[1], device="cpu", callbacks=[counter])
summary = trainer.fit()
final = per_net(trainer)
shas = trainer.dist.all_gather_object(weights_sha256(trainer.strategy.full_state_dict(trainer.task)))
if trainer.main:
    json.dump({"calls": calls, "shas": shas, "steps": trainer.step, "summary": summary,
               "moved": [net for net in final if final[net] != counter.initial[net]],
               "keys": sorted(trainer.task.state_dict())}, open(sys.argv[2], "w"))
trainer.dist.teardown()
"""


def test_gan_phases_under_ddp_reduce_each_net_once_per_step_and_fsdp_reaches_the_same_weights(tmp_path: Path):
    """A DCGAN under 2 processes. ddp: generator and discriminator are each a DistributedDataParallel
    unit; each all-reduces its gradient bucket once per optimiser step (its own phase, on the
    accumulation boundary only: 8 micro-batches with grad_accum 2 give 4 steps, 4 all-reduces each),
    both processes end with the same weights, and checkpoint keys carry no DDP `module.`. fsdp: the
    same run sharded ends at the same weights (float tolerance) with the same keys. (Neither can match
    one process: each process draws its own noise z.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "gan.py"
    script.write_text(GAN_UNDER_DDP)
    out = {}
    for strategy in ("ddp", "fsdp"):
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
              "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path / strategy),
              str(tmp_path / f"{strategy}.json"), strategy], env)
        out[strategy] = json.loads((tmp_path / f"{strategy}.json").read_text())
        assert out[strategy]["steps"] == 4  # 256 digits / (2 x 16) = 8 micro-batches, 2 per step
        assert out[strategy]["shas"][0] == out[strategy]["shas"][1] == out[strategy]["summary"]["weights_sha256"]
    assert out["ddp"]["calls"] == {"model.generator": 4, "model.discriminator": 4}
    assert not any(".module." in k for k in out["ddp"]["keys"]) and out["ddp"]["keys"] == out["fsdp"]["keys"]
    ddp, _, _ = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last")
    fsdp, _, _ = load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "last")
    assert sorted(ddp) == out["ddp"]["keys"]
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-4, atol=1e-5)
    for strategy in out:  # both nets trained
        assert out[strategy]["moved"] == ["model.generator.", "model.discriminator."], strategy
