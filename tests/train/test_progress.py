"""Progress: a live bar on a terminal, a few lines (never one per step) in a log."""

from __future__ import annotations

import io

from strata.api import train
from strata.train.progress import Progress

CONFIG = {
    "name": "progress",
    "data": {"name": "digits", "batch_size": 16},
    "model": {"name": "mlp", "hidden": [32]},
    "task": {"name": "classify"},
    "trainer": {"max_epochs": 2},
}


def test_log_output_has_a_line_per_epoch_not_per_step(tmp_path):
    out = io.StringIO()
    res = train(CONFIG, run_dir=tmp_path / "run", progress=Progress("auto", log_every_s=3600, stream=out))
    lines = out.getvalue().splitlines()
    assert res.summary["steps"] == 2 * 76  # 152 steps ...
    assert sum(line.startswith("epoch ") for line in lines) == 2  # ... two epoch lines
    assert len(lines) <= 5  # plus the start and summary lines


def test_terminal_gets_a_live_bar_with_loss_rate_and_eta(tmp_path):
    out = io.StringIO()
    bar = Progress("auto", stream=out, force_terminal=True)
    assert bar.mode == "bar"
    bar._next_refresh = 0.0
    train(CONFIG, run_dir=tmp_path / "run", progress=bar)
    text = out.getvalue()
    assert "epoch 1" in text and "76/76" in text and "ETA" in text and "/s" in text
    assert "loss" in text and "epoch 2 done" in text


def test_a_jupyter_kernel_gets_the_live_bar(monkeypatch):
    import sys
    import types

    from strata.train.progress import Progress, in_notebook

    assert not in_notebook()
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert in_notebook()
    assert Progress().mode == "bar"
    assert Progress(enabled=False).mode == "off"
