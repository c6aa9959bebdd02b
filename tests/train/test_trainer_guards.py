"""Regression tests for the review's findings: each guard gives bad input a clear error, and each
edge of the loop (accumulation remainders, one-example batches, extra task logs) works."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from strata.api import train
from strata.data.base import TensorSplit
from strata.errors import CheckpointError, ConfigError, StrataError
from strata.tasks import TASKS
from strata.tasks.base import Loss
from strata.tasks.classify import Classify
from strata.train.loader import EpochBatches

DIGITS = {
    "name": "guards",
    "data": {"name": "digits", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [16]},
    "task": {"name": "classify"},
    "trainer": {"max_epochs": 1, "progress": "off"},
}


def test_a_model_that_does_not_fit_the_data_is_a_config_error_before_training(tmp_path):
    # an MLP told to expect 28x28 images, given 8x8 digits
    with pytest.raises(ConfigError, match=r"\[model\] 'mlp' does not fit the data of 'digits'"):
        train(DIGITS, ["model.in_shape=[1, 28, 28]"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_a_used_run_folder_needs_resume(tmp_path):
    train(DIGITS, run_dir=tmp_path / "run")
    with pytest.raises(StrataError, match="already holds a run; add --resume"):
        train(DIGITS, run_dir=tmp_path / "run")


def test_resume_with_other_settings_names_what_changed(tmp_path):
    train(DIGITS, ["trainer.max_epochs=1"], run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"\[optimizer\] differ"):
        train(DIGITS, ["optimizer.name='sgd'", "trainer.max_epochs=2"], run_dir=tmp_path / "run", resume=True)
    res = train(DIGITS, ["trainer.max_epochs=2"], run_dir=tmp_path / "run", resume=True)
    assert res.summary["epochs"] == 2


def test_onecycle_with_accumulation_remainder_finishes(tmp_path):
    # 1213 examples / 32 = 38 batches; accumulating 5 leaves a group of 3 at each epoch's end
    res = train(DIGITS, ["schedule.name='onecycle'", "trainer.grad_accum=5", "trainer.max_epochs=2"],
                run_dir=tmp_path / "run")
    assert res.summary["steps"] == 2 * 8


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8])
def test_onecycle_runs_of_a_few_steps_finish(tmp_path, steps):
    # 4 steps at pct_start 0.25 put torch's peak at step 0 and divided by zero inside OneCycleLR
    res = train(DIGITS, ["schedule.name='onecycle'", f"trainer.max_steps={steps}"], run_dir=tmp_path / "run")
    assert res.summary["steps"] == steps
    assert all(r["lr"] > 0 for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if "lr" in r)


def test_the_trainer_takes_a_torch_device(tmp_path):
    res = train(DIGITS, ["trainer.max_steps=2"], run_dir=tmp_path / "run", device=torch.device("cpu"))
    assert res.summary["device"] == "cpu"


def test_a_last_training_batch_of_one_example_is_dropped():
    split = TensorSplit({"x": torch.zeros(33, 2)})
    batches = EpochBatches(split, 16, True, 0, torch.device("cpu"))
    assert [len(b["x"]) for _, b in batches.epoch(0)] == [16, 16]
    evaluation = EpochBatches(split, 16, False, 0, torch.device("cpu"))
    assert sum(len(b["x"]) for _, b in evaluation.epoch(0)) == 33  # evaluation sees every example


def test_batch_norm_trains_when_the_data_leaves_one_example_over(tmp_path):
    # 1213 training digits with batch 12 leave exactly one over
    res = train(DIGITS, ["data.batch_size=12", "model.norm='batch'"], run_dir=tmp_path / "run")
    assert res.summary["steps"] == 1213 // 12


class _ClassifyWithLogs(Classify):
    """classify, also reporting the share of the batch it gets right as a per-step log."""

    def training_step(self, batch):
        logits = self.model(batch["x"])
        yield Loss("main", F.cross_entropy(logits, batch["y"]),
                   {"batch_acc": (logits.argmax(-1) == batch["y"]).float().mean()})


TASKS.register("toy_classify_with_logs", _ClassifyWithLogs)


def test_task_logs_are_averaged_into_the_training_events(tmp_path):
    train({**DIGITS, "task": {"name": "toy_classify_with_logs"}, "trainer": {"max_epochs": 3, "progress": "off"}},
          run_dir=tmp_path / "run")
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accs = [e["train/batch_acc"] for e in events if e["event"] == "train"]
    assert len(accs) == 3 and 0 <= accs[0] < accs[-1] <= 1  # one mean per epoch, rising as it learns


@pytest.mark.parametrize("monitor,message", [
    ("val/accuracy", r"'val/accuracy' is not a validation metric of this run \(did you mean 'val/acc'\?\)"),
    ("acc", r"'acc' is not a validation metric of this run .*it logs val/acc, val/loss"),
])
def test_a_monitor_typo_fails_before_the_first_training_step(tmp_path, monitor, message):
    with pytest.raises(ConfigError, match=message):
        train(DIGITS, [f"trainer.monitor='{monitor}'", "trainer.mode='max'"], run_dir=tmp_path / "run")
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "train" not in events and not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_the_sanity_check_leaves_the_run_unchanged(tmp_path, monkeypatch):
    step = Classify.validation_step

    def noisy(self, batch):  # a validation that draws from the global generator
        torch.rand(3)
        return step(self, batch)

    monkeypatch.setattr(Classify, "validation_step", noisy)
    dropout = ["model.dropout=0.3"]  # training draws from the global generator too
    with_check = train(DIGITS, dropout + ["trainer.sanity_val_batches=2"], run_dir=tmp_path / "a").summary
    without = train(DIGITS, dropout + ["trainer.sanity_val_batches=0"], run_dir=tmp_path / "b").summary
    assert with_check["weights_sha256"] == without["weights_sha256"]
