"""The trainer's lean step (one process, fp32, one optimiser, no clipping: nothing to enter around a phase)
trains exactly as its general step does, and the loop's training loss, read from the device in batches by
the non-finite guard, is the mean of the losses the steps returned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import strata

CLIPPED_TASK = '''
import torch
from torch import nn
import torch.nn.functional as F
import strata


class Clipped(strata.Task):
    """One optimiser and a loss tensor, with an update of its own after each optimiser step."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.updates = 0

    def training_step(self, batch):
        return F.cross_entropy(self.net(batch["x"]), batch["y"])

    def after_optimizer_step(self, name):
        self.updates += 1
        with torch.no_grad():
            self.net[0].weight.clamp_(-0.05, 0.05)

    def validation_step(self, batch):
        logits = self.net(batch["x"])
        n = len(batch["y"])
        return {"loss": (F.cross_entropy(logits, batch["y"], reduction="sum"), n),
                "acc": ((logits.argmax(-1) == batch["y"]).sum(), n)}
'''


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x[:600] / 16).astype(np.float32), y[:600]


class Path_(strata.Callback):
    """Records which step the trainer took; `general` turns the lean one off before the first step."""

    def __init__(self, general: bool = False):
        self.general, self.bare, self.losses = general, None, []

    def on_fit_start(self, trainer):
        if self.general:
            trainer._bare = False
        self.bare = trainer._bare

    def on_batch_end(self, trainer, step, loss):
        self.losses.append(float(loss))


def twice(make, data, tmp_path, **kw):
    """The same run by the lean step and by the general one: (run, callback) for each."""
    out = []
    for general in (False, True):
        cb = Path_(general)
        run = strata.fit(make(), data, epochs=2, batch_size=32, lr=1e-2, verbose=0, seed=3, callbacks=[cb],
                         run_dir=tmp_path / f"general-{general}", **kw)
        out.append((run, cb))
    return out


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))


@pytest.mark.parametrize("kw", [
    {},
    # a learning rate stepped every optimiser step, and two batches to a step
    {"schedule": "onecycle", "overrides": ["trainer.grad_accum=2"]},
], ids=["plain", "onecycle-accum"])
def test_the_lean_step_trains_exactly_as_the_general_one(digits, tmp_path, kw):
    (lean, lean_cb), (general, general_cb) = twice(mlp, digits, tmp_path, **kw)
    assert lean_cb.bare is True and general_cb.bare is False  # each path was taken
    same_weights(lean.model, general.model)
    assert lean_cb.losses == general_cb.losses
    assert lean.history == general.history
    assert lean.summary["val/acc"] == general.summary["val/acc"] > 0.5


def test_a_tasks_own_update_runs_after_each_lean_step(digits, tmp_path):
    from strata.models.user import load_class

    (tmp_path / "clipped.py").write_text(CLIPPED_TASK)
    Clipped = load_class(f"{tmp_path / 'clipped.py'}:Clipped")

    def make():
        torch.manual_seed(0)
        return Clipped()

    (lean, lean_cb), (general, general_cb) = twice(make, digits, tmp_path)
    assert lean_cb.bare is True
    steps = len(lean_cb.losses)
    assert lean.model.updates == general.model.updates == steps > 0
    assert float(lean.model.net[0].weight.detach().abs().max()) <= 0.05 + 1e-7
    same_weights(lean.model, general.model)


@pytest.mark.parametrize("over", [[], ["trainer.grad_clip=1.0"]], ids=["lean", "general"])
def test_the_logged_training_loss_is_the_mean_of_the_steps_losses(digits, tmp_path, over):
    # the loop keeps no loss sum of its own: the guard adds up each batch of losses when it checks them
    cb = Path_()
    run = strata.fit(mlp(), digits, epochs=3, batch_size=32, verbose=0, callbacks=[cb], run_dir=tmp_path / "r",
                     overrides=over)
    assert cb.bare is (not over)
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in logged if r["event"] == "train"]
    per_epoch = len(cb.losses) // 3
    assert len(train) == 3 and per_epoch * 3 == len(cb.losses)
    for e, value in enumerate(train):
        expect = sum(cb.losses[e * per_epoch:(e + 1) * per_epoch]) / per_epoch
        assert value == pytest.approx(expect, rel=1e-6)
