"""[trainer] nonfinite: a NaN or inf loss stops the run loudly ("stop"), or its step is skipped and
counted ("skip"); summary.json never holds NaN; a checkpoint never holds the weights a NaN step made."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import strata
from strata.errors import Diverged
from strata.run_folder import RunFolder
from strata.train.checkpoint import load_checkpoint
from strata.train.nonfinite import SKIP_LIMIT, NonFiniteGuard


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:512] / 16, dtype=torch.float32), torch.tensor(y[:512])


class NaNAt(nn.Module):
    """A small MLP whose forward returns NaN on the training calls listed in `bad` (1-based)."""

    def __init__(self, bad: tuple[int, ...] = ()):
        super().__init__()
        self.bad = bad
        self.calls = 0
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls in self.bad or "all" in self.bad:
                out = out * float("nan")
        return out


def fit(model, data, tmp_path, *overrides, **kw):
    return strata.fit(model, data, epochs=kw.pop("epochs", 2), batch_size=32, val_split=0.1, verbose=0,
                      run_dir=tmp_path / "run", overrides=list(overrides), **kw)


class Poison(strata.Callback):
    """Sets the weights to NaN after step `at`: every later loss is NaN."""

    def __init__(self, at: int):
        self.at = at

    def on_batch_end(self, trainer, step, loss):
        if step == self.at:
            with torch.no_grad():
                for p in trainer.task.parameters():
                    p.fill_(float("nan"))


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_last_finite_loss(digits, tmp_path):
    with pytest.raises(Diverged) as e:
        fit(NaNAt(), digits, tmp_path, "trainer.checkpoint_every_n_steps=2", callbacks=[Poison(at=5)])
    msg = str(e.value)
    assert "training stopped at step 6" in msg and "the loss is nan" in msg
    assert "the last finite loss was" in msg and "at step 5" in msg
    assert "learning rate" in msg and "[trainer] nonfinite = \"skip\"" in msg
    assert "checkpoints/last holds step 4" in msg
    folder = RunFolder(tmp_path / "run")
    assert not folder.is_finished()  # no summary.json with NaN in it
    weights, state, _ = load_checkpoint(folder.checkpoint("last"))
    assert state["step"] == 4 and all(torch.isfinite(w).all() for w in weights.values())
    events = [r for r in folder.read_metrics() if r["event"] == "nonfinite"]
    assert events and events[0]["at_step"] == 6


def test_the_check_waits_for_a_sync_point_not_every_step(digits, tmp_path, monkeypatch):
    # the loop reads the losses in one batch: the NaN of step 3 is found at the epoch's end (15 steps)
    reads = []
    real = NonFiniteGuard.check

    def counted(self, trainer):
        reads.append(len(self.pending))
        return real(self, trainer)

    monkeypatch.setattr(NonFiniteGuard, "check", counted)
    with pytest.raises(Diverged, match="training stopped at step 3"):
        fit(NaNAt(bad=(3,)), digits, tmp_path)
    assert max(reads) > 1


def test_skip_mode_leaves_out_the_bad_step_counts_it_and_finishes(digits, tmp_path):
    run = fit(NaNAt(bad=(4,)), digits, tmp_path, "trainer.nonfinite='skip'")
    assert run.summary["nonfinite_skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    text = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    assert all(h["train/loss"] == h["train/loss"] for h in run.history)  # no NaN in the epoch means


def test_skip_mode_stops_when_every_step_is_bad(digits, tmp_path):
    with pytest.raises(Diverged, match=f"{SKIP_LIMIT} steps in a row had a non-finite loss or gradient"):
        fit(NaNAt(bad=("all",)), digits, tmp_path, "trainer.nonfinite='skip'")


def test_summary_figures_that_are_not_finite_become_null_and_are_named():
    said = []
    out = NonFiniteGuard("stop").summarise({"val/loss": float("nan"), "val/acc": 0.5, "test/ppl": float("inf")},
                                           said.append)
    assert out["val/loss"] is None and out["test/ppl"] is None and out["val/acc"] == 0.5
    assert out["nonfinite_metrics"] == ["test/ppl", "val/loss"]
    assert "val/loss = nan" in said[0] and "null" in said[0]
    json.dumps(out, allow_nan=False)
