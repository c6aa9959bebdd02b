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
