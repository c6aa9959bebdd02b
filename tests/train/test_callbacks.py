"""Callbacks through the real Trainer: the hooks a callback sees and their order, a stop a callback
asks for (one process and two), early stopping's state across --resume, the metrics files, and
inference that loads without the training loop."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strata.build import resolve_config
from strata.errors import ConfigError, StrataError
from strata.run_folder import RunFolder
from strata.train import Callback, Trainer
from strata.train.progress import Progress

SMALL = {
    "name": "callbacks",
    "data": {"name": "digits", "batch_size": 64, "limit": 256},  # 256 / 64 = 4 steps per epoch
    "model": {"name": "mlp", "hidden": [16]},
    "task": {"name": "classify"},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "trainer": {"max_epochs": 2, "seed": 1, "progress": "off"},
}
STEPS_PER_EPOCH = 4


def fit(run_dir, overrides=(), callbacks=(), resume=False) -> Trainer:
    trainer = Trainer(resolve_config(SMALL, overrides), run_dir=run_dir, resume=resume, callbacks=callbacks,
                      progress=Progress("off"))
    trainer.fit()
    return trainer


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.step))

    def on_batch_end(self, trainer, step, loss):
        assert torch.is_tensor(loss) and loss.dim() == 0 and not loss.requires_grad
        self.calls.append(("batch_end", step, loss))

    def on_validation_end(self, trainer, metrics):
        self.calls.append(("validation_end", dict(metrics)))

    def on_checkpoint_saved(self, trainer, which, path):
        assert (Path(path) / "manifest.json").is_file()
        self.calls.append(("checkpoint_saved", which))

    def on_epoch_end(self, trainer, metrics):
        self.calls.append(("epoch_end", dict(metrics)))

    def on_log(self, trainer, record):
        self.calls.append(("log", record["event"]))

    def on_fit_end(self, trainer, summary):
        self.calls.append(("fit_end", summary))

    def on_exception(self, trainer, error):
        self.calls.append(("exception", error))


def test_a_callback_sees_every_hook_in_order_with_the_runs_own_figures(tmp_path):
    rec = Recorder()
    fit(tmp_path / "run", callbacks=[rec])
    names = [c[0] if c[0] not in ("log", "checkpoint_saved") else f"{c[0]}:{c[1]}" for c in rec.calls]
    # built-ins run first: the best checkpoint is saved before this callback hears of the validation
    improved = ["checkpoint_saved:best", "validation_end"]
    epoch = ["batch_end"] * STEPS_PER_EPOCH + ["log:train", "log:val"]
    tail = ["checkpoint_saved:last", "epoch_end"]
    second = names[len(epoch) * 2 + len(improved) + len(tail) + 1:-2]
    assert second in (improved + tail, ["validation_end"] + tail)  # the second validation may be worse
    assert names == ["fit_start"] + epoch + improved + tail + epoch + second + ["log:test", "fit_end"]
    assert [c[1] for c in rec.calls if c[0] == "batch_end"] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # the figures are the run's: what metrics.jsonl and summary.json hold
    events = RunFolder(tmp_path / "run").read_metrics()
    vals = [e for e in events if e["event"] == "val"]
    seen = [c[1] for c in rec.calls if c[0] == "validation_end"]
    assert seen == [{k: v for k, v in e.items() if k.startswith("val/")} for e in vals]
    epochs = [c[1] for c in rec.calls if c[0] == "epoch_end"]
    trains = [e for e in events if e["event"] == "train"]
    assert [m["train/loss"] for m in epochs] == [e["loss"] for e in trains]
    assert epochs[0]["val/acc"] == seen[0]["val/acc"]
    summary = rec.calls[-1][1]
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    # a loss read late is still that step's loss: the first epoch's mean is the logged one
    first = torch.stack([c[2].float() for c in rec.calls if c[0] == "batch_end"][:STEPS_PER_EPOCH]).mean()
    assert float(first) == pytest.approx(trains[0]["loss"], rel=1e-6)


def test_hooks_nobody_defines_are_never_called(tmp_path):
    from strata.train.callbacks import HOOKS, hook_table

    assert all(len(hook_table([Recorder()])[h]) == 1 for h in HOOKS)
    assert all(fns == [] for fns in hook_table([Callback()]).values())
    assert {h for h, fns in hook_table([StopAt(1)]).items() if fns} == {"on_batch_end"}
    trainer = Trainer(resolve_config(SMALL), run_dir=tmp_path / "run")
    trainer._setup()
    assert trainer._hooks["on_batch_end"] == []  # the built-ins cost the step loop nothing


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, step, loss):
        if step == self.step:
            trainer.request_stop(f"asked to stop at step {step}")


def test_a_requested_stop_ends_the_run_at_that_step_with_last_saved_and_a_summary(tmp_path):
    trainer = fit(tmp_path / "run", ["trainer.max_epochs=5"], callbacks=[StopAt(6)])
    summary = trainer.summary
    assert summary["steps"] == 6 and summary["epochs"] == 1  # mid-way through the second epoch
    folder = RunFolder(tmp_path / "run")
    assert folder.read_summary() == summary and "test/acc" in summary
    from strata.train.checkpoint import load_checkpoint

    _, state, _ = load_checkpoint(folder.checkpoint("last"))
    assert state["step"] == 6 and state["batch_in_epoch"] == 2


def test_a_non_callback_is_refused_at_once(tmp_path):
    with pytest.raises(StrataError, match="must be a strata.train.Callback, got function"):
        Trainer(resolve_config(SMALL), run_dir=tmp_path / "run", callbacks=[lambda trainer: None])


def test_on_exception_sees_the_error_and_the_logs_are_closed(tmp_path):
    rec = Recorder()
    with pytest.raises(ConfigError, match="monitor"):
        fit(tmp_path / "run", ["trainer.monitor='val/accuracy'"], callbacks=[rec])
    assert rec.calls[0][0] == "fit_start" and rec.calls[-1][0] == "exception"
    assert isinstance(rec.calls[-1][1], ConfigError)
    assert (tmp_path / "run" / "metrics.jsonl").exists()


# --- early stopping and best checkpoint -----------------------------------------------------------


def test_early_stopping_state_survives_resume(tmp_path):
    # val/loss falls as the model learns: with mode "max" no validation after the first improves, so
    # patience 3 stops after epoch 4. Interrupted after epoch 2, a resume must still stop after 4
    # (a count restarted from zero would stop after 6), with the same weights.
    stop = ["trainer.monitor='val/loss'", "trainer.mode='max'", "trainer.early_stopping_patience=3"]
    whole = fit(tmp_path / "whole", stop + ["trainer.max_epochs=10"]).summary
    assert whole["epochs"] == 4
    fit(tmp_path / "split", stop + ["trainer.max_epochs=2"])
    resumed = fit(tmp_path / "split", stop + ["trainer.max_epochs=10"], resume=True).summary
    assert resumed["epochs"] == 4 and resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["best_val/loss"] == whole["best_val/loss"]
    events = RunFolder(tmp_path / "split").read_metrics()
    assert [e["epoch"] for e in events if e["event"] == "early_stop"] == [4]


def test_best_checkpoint_holds_the_best_validation(tmp_path):
    fit(tmp_path / "run", ["trainer.max_epochs=3"])
    folder = RunFolder(tmp_path / "run")
    vals = [e for e in folder.read_metrics() if e["event"] == "val"]
    best = min(vals, key=lambda e: e["val/loss"])
    from strata.train.checkpoint import load_checkpoint

    _, state, _ = load_checkpoint(folder.checkpoint("best"))
    assert state["step"] == best["step"]
    assert folder.newest_checkpoint() == folder.checkpoint("best")


# --- the metrics files ------------------------------------------------------------------------------


def test_metrics_csv_holds_every_figure_of_metrics_jsonl(tmp_path):
    fit(tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    with open(folder.metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [(e["event"], str(e["step"]), k, v) for e in folder.read_metrics()
                for k, v in e.items() if k not in ("event", "step", "epoch", "time")]
    assert [(r["event"], r["step"], r["name"], float(r["value"])) for r in rows] == expected
    assert {"train", "val", "test"} == {r["event"] for r in rows}


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    fit(tmp_path / "run", ["trainer.tensorboard=true"])
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tensorboard").iterdir())


# --- processes and imports --------------------------------------------------------------------------

STOP_ON_RANK_1 = """
import json, sys
from strata.build import resolve_config
from strata.train import Callback, Trainer
from strata.train.progress import Progress

class StopOnRank1(Callback):
    def on_batch_end(self, trainer, step, loss):
        if step == 3 and trainer.dist.rank == 1:
            trainer.request_stop("rank 1 asked")

cfg = resolve_config(json.loads(sys.argv[1]))
trainer = Trainer(cfg, run_dir=sys.argv[2], device="cpu", callbacks=[StopOnRank1()], progress=Progress("off"))
try:
    summary = trainer.fit()
finally:
    trainer.dist.teardown()
print(json.dumps({"rank": trainer.dist.rank, "step": trainer.step}))
"""


def test_a_stop_asked_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    from strata.train.trainer import STOP_CHECK_EVERY

    script = tmp_path / "stop.py"
    script.write_text(STOP_ON_RANK_1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 1184 examples / (16 x 2 processes) = 37 steps an epoch: rank 1 asks at step 3, the ranks agree at
    # their first check, step 8
    cfg = json.dumps({**SMALL, "data": {"name": "digits", "batch_size": 16, "limit": 1184}})
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          "--master_addr=127.0.0.1", f"--master_port={port}", str(script), cfg, str(tmp_path / "run")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = dict(tuple(json.loads(line).values()) for line in out.stdout.splitlines() if line.startswith("{"))
    assert steps == {0: STOP_CHECK_EVERY, 1: STOP_CHECK_EVERY}
    assert RunFolder(tmp_path / "run").read_summary()["steps"] == STOP_CHECK_EVERY


def test_inference_loads_without_the_training_loop():
    code = ("import sys, strata.evaluate, strata.api, strata.cli; "
            "assert 'strata.train.trainer' not in sys.modules, 'inference imported the trainer'")
    subprocess.run([sys.executable, "-c", code], check=True)
