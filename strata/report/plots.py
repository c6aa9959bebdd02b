"""Learning curves and confusion matrices as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strata.run_folder import RunFolder


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train and validation loss per epoch, and every other validation metric on a second axis."""
    plt = _plt()
    folder = RunFolder(run_dir)
    events = folder.read_metrics()
    train = [(e["epoch"], e["loss"]) for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val and "val/loss" in val[0]:
        ax.plot([e["epoch"] for e in val], [e["val/loss"] for e in val], label="val loss", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    others = sorted({k for e in val for k in e if k.startswith("val/") and k != "val/loss"})
    if others:
        ax2 = ax.twinx()
        for k in others[:3]:
            ax2.plot([e["epoch"] for e in val if k in e], [e[k] for e in val if k in e], "--", label=k)
        ax2.set_ylabel(", ".join(others[:3]))
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(f"learning curve: {folder.path.name}")
    fig.tight_layout()
    out = Path(out) if out else folder.artefact("learning_curve.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def confusion_matrix(y_true, y_pred, class_names: list[str], out: str | Path, title: str = "") -> Path:
    from sklearn.metrics import confusion_matrix as cm

    plt = _plt()
    m = cm(np.asarray(y_true), np.asarray(y_pred), labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


SKIP = ("event", "step", "epoch", "time", "lr")


def metric_curves(events: list[dict], out: str | Path) -> Path | None:
    """One small panel per metric over optimiser steps: the training figure and its validation twin
    (`loss` with `val/loss`, ...) on the same axes; None when no train or val event was logged."""
    train = [e for e in events if e.get("event") == "train"]
    val = [e for e in events if e.get("event") == "val"]
    # a figure's name without its split: training's "loss" or "train/kl" and validation's "val/kl"
    names = [k.removeprefix("train/") for e in train for k in e if k not in SKIP]
    names += [k[4:] for e in val for k in e if k.startswith("val/")]
    names = list(dict.fromkeys(sorted(names, key=lambda k: (k != "loss", k))))  # loss first, then by name
    if not names:
        return None
    plt = _plt()
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, evs, keys, colour in (("train", train, (name, f"train/{name}"), "tab:blue"),
                                         ("val", val, (f"val/{name}",), "tab:orange")):
            pts = [(e["step"], e[k]) for e in evs for k in keys if isinstance(e.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3, label=label, color=colour)
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def predicted_vs_true(y_true, y_pred, out: str | Path, name: str = "target") -> Path:
    """A regression's predictions against the truth (the diagonal is perfect) and its residuals."""
    plt = _plt()
    y, p = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.scatter(y, p, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    a.plot([lo, hi], [lo, hi], color="black", lw=1)
    a.set_xlabel(f"true {name}")
    a.set_ylabel(f"predicted {name}")
    a.set_title("predicted vs true")
    b.hist(p - y, bins=40, color="tab:blue", alpha=0.8)
    b.set_xlabel("residual (predicted - true)")
    b.set_ylabel("examples")
    b.set_title("residuals")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def score_histogram(scores, anomalous, threshold: float | None, out: str | Path) -> Path:
    """Anomaly scores of normal and anomalous examples (one histogram when labels are unknown) and the
    alarm threshold chosen on validation data."""
    plt = _plt()
    s = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bins = np.histogram_bin_edges(s, bins=50)
    if anomalous is None:
        ax.hist(s, bins=bins, color="tab:blue", alpha=0.8, label="examples")
    else:
        a = np.asarray(anomalous, dtype=bool)
        ax.hist(s[~a], bins=bins, color="tab:blue", alpha=0.6, label="normal")
        ax.hist(s[a], bins=bins, color="tab:red", alpha=0.6, label="anomalous")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", lw=1, ls="--", label="threshold")
    ax.set_xlabel("anomaly score (mean reconstruction error)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)
