"""[trainer] strategy = "fsdp" (FSDP2 fully_shard, torch.distributed.checkpoint) with 2 gloo CPU
processes: the weights of one process over the same global batches; a resume on 1 process that
continues as if it had never stopped; SIGKILL + resume bit-identical; the consolidated weights read
by strata.load and `strata evaluate`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import strata
from strata.build import build_config
from strata.errors import ConfigError
from strata.evaluate import evaluate_run
from strata.train.checkpoint import load_checkpoint, read_manifest
from train.test_distributed import CONFIG as DDP_CONFIG
from train.test_distributed import _free_port, _run, check_two_processes_match_one
from train.test_resume import CONFIG as RESUME_CONFIG
from train.test_resume import check_sigkill_then_resume_is_bit_identical

# the DDP test's run (2 epochs of an MLP on 1184 digits), sharded
CONFIG = DDP_CONFIG.replace("max_epochs = 2", "max_epochs = {epochs}") + 'strategy = "fsdp"\n'


def _torchrun(cfg: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "strata", "train", str(cfg),
            "--run-dir", str(run_dir), "--device", "cpu", *extra]


def test_fsdp_two_processes_match_one_and_a_two_process_run_resumes_on_one(tmp_path: Path):
    """1. Sharded over 2 processes (batch 16 each) = one process at batch 32, within float tolerance,
    and the checkpoint holds both processes' shards beside the consolidated weights.
    2. A 2-process run stopped after epoch 1 resumes on 1 process (batch 32: the same global batches;
    torch.distributed.checkpoint reshards weights and momentum) and ends where the uninterrupted
    run ends. 3. strata.load and `strata evaluate` read the consolidated weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    w1 = check_two_processes_match_one(CONFIG, tmp_path, one={"batch": 32, "epochs": 2},
                                       two={"batch": 16, "epochs": 2})
    last = tmp_path / "two" / "checkpoints" / "last"
    shards = last / read_manifest(last)["current"]["shards"]
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    half = tmp_path / "half"
    (tmp_path / "half.toml").write_text(CONFIG.format(batch=16, epochs=1))
    _run(_torchrun(tmp_path / "half.toml", half), env)
    (tmp_path / "rest.toml").write_text(CONFIG.format(batch=32, epochs=2))
    _run([sys.executable, "-m", "strata", "train", str(tmp_path / "rest.toml"), "--run-dir", str(half),
          "--device", "cpu", "--resume"], env)
    w, state, _ = load_checkpoint(half / "checkpoints" / "last")
    summary = json.loads((half / "summary.json").read_text())
    assert state["step"] == 2 * 37 and summary["processes"] == 1
    for k in w1:
        torch.testing.assert_close(w[k], w1[k], rtol=1e-4, atol=1e-5)

    two = tmp_path / "two"
    run = strata.load(two, which="last")
    for k, v in run.task.state_dict().items():
        assert torch.equal(v, load_checkpoint(last)[0][k]), k
    measured = evaluate_run(two, "test", device="cpu")
    best_test = json.loads((two / "summary.json").read_text())["test/acc"]
    assert measured["test/acc"] == pytest.approx(best_test, abs=1e-9) and measured["test/acc"] > 0.5


# the one-process resume test's run (a CNN with dropout, random shifts, AdamW, cosine), on 640 digits
# at 2 x 16 for 3 epochs, sharded
SIGKILL_CONFIG = (RESUME_CONFIG.replace("batch_size = 32", "batch_size = 16\nlimit = 640")
                  .replace("max_epochs = 12", "max_epochs = 3") + 'strategy = "fsdp"\n')


def test_fsdp_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path):
    """2 processes, AdamW states sharded, dropout and shifts drawing from each process's own random stream:
    SIGKILL to torchrun and both workers just after a checkpoint mid-epoch, resume on 2 processes:
    the weights of the run that was never killed, bit for bit."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(SIGKILL_CONFIG)
    check_sigkill_then_resume_is_bit_identical(cfg, tmp_path, _torchrun, steps_per_epoch=640 // 32)


def test_strategy_is_checked_where_the_config_is_read():
    run = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "task": {"name": "classify"}}
    with pytest.raises(ConfigError, match=r"strategy.*'auto', 'ddp', 'fsdp'.*did you mean 'fsdp'"):
        build_config({**run, "trainer": {"strategy": "fdsp"}})
    assert build_config(run).trainer.strategy == "auto"


def test_a_mid_epoch_resume_with_another_global_batch_is_refused_with_the_batch_size_that_fits():
    """batch_in_epoch counts global batches: a run saved mid-epoch at 2 x 16 and resumed on 1 process
    continues at the same example only at batch 32, and says so."""
    from types import SimpleNamespace

    from strata.train.trainer import Trainer

    one_process = Trainer.__new__(Trainer)  # only what the check reads
    one_process.train_batches = SimpleNamespace(global_batch=16)
    one_process.dist = SimpleNamespace(world=1)
    one_process.cfg = SimpleNamespace(data=SimpleNamespace(batch_size=16))
    saved = {"global_batch": 32, "batch_in_epoch": 5, "epoch": 1}
    with pytest.raises(ConfigError, match=r"middle of epoch 2 with global batches of 32 examples; this run's are "
                                          r"16 x 1 process\(es\) = 16; set \[data\] batch_size = 32"):
        one_process._check_position(saved, "last")
    one_process._check_position({**saved, "batch_in_epoch": 0}, "last")  # at an epoch's end: any batch
    one_process.train_batches.global_batch = 32
    one_process._check_position(saved, "last")
