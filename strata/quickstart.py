"""`strata quickstart`: the main job, offline. A CNN learns scikit-learn's handwritten digits
(bundled with the package, no network), is judged on a held-out test split used neither for training
nor for model selection, and leaves a run folder with a learning curve and a confusion matrix."""

from __future__ import annotations

import time
from pathlib import Path

import torch

QUICKSTART = {
    "name": "quickstart-digits-cnn",
    "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
    "model": {"name": "cnn", "channels": [32, 64], "fc_hidden": 128, "dropout": 0.1},
    "task": {"name": "classify"},
    "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
    "schedule": {"name": "onecycle"},
    "trainer": {"max_epochs": 15, "seed": 0, "monitor": "val/loss"},
}


def quickstart(run_dir=None, device=None, quiet: bool = False) -> dict:
    from strata.api import load_run, train
    from strata.data import load_data
    from strata.report.plots import confusion_matrix, learning_curve
    from strata.train.progress import Progress

    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else print
    say("strata quickstart: a CNN on scikit-learn's handwritten digits (8x8 images, offline)")
    res = train(QUICKSTART, run_dir=run_dir, device=device, progress=Progress(enabled=not quiet))
    run = load_run(res.run_dir)
    bundle = load_data(run.cfg.data)
    x, y = bundle.test.tensors["x"], bundle.test.tensors["y"]
    with torch.no_grad():
        pred = run.task.predictions(x)
    curve = learning_curve(res.run_dir)
    cm = confusion_matrix(y.tolist(), pred.tolist(), run.task.class_names, Path(res.run_dir) / "confusion_matrix.png",
                          title=f"digits test split: {float((pred == y).float().mean()):.1%} correct")
    acc = res.summary["test/acc"]
    out = {"test/acc": acc, "test_examples": len(y), "wall_time_s": round(time.perf_counter() - t0, 2),
           "run_dir": str(res.run_dir), "learning_curve": str(curve), "confusion_matrix": str(cm)}
    say(f"\ntest accuracy: {acc:.2%} on {len(y)} held-out digits (never used for training or model selection)")
    say(f"learning curve:   {curve}\nconfusion matrix: {cm}")
    say(f"next: strata predict {res.run_dir} some_digit.png   |   strata evaluate {res.run_dir}")
    return out
