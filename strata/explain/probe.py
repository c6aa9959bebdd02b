"""Layer-wise linear probes (Alain & Bengio 2016, "Understanding intermediate layers using linear
classifier probes"): how linearly separable the classes are in each stage's features.

For each stage (strata/explain/layers.py), a logistic regression (scikit-learn, on standardised
features) is fitted on the pooled outputs of `train` examples of the training split and scored on
`test` examples of the test split; layer 0 is the raw input (pixels, frames, table rows, or for token
ids a bag of words over the most frequent ids). The network is frozen: a probe measures what a stage
holds, it does not train it. "Deeper layers hold more abstract, more separable features" becomes a
curve of test accuracy against depth.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from strata.explain.layers import Catch, Stage, pooled

INPUT = "input"  # layer 0
BAG_OF_WORDS = 1000  # token-id inputs: counts of the most frequent ids make layer 0


def sample_batches(split, n: int, batch_size: int, device, collate=None, seed: int = 0):
    """Batches (dicts of tensors on `device`) of a fixed random sample of n examples of a split."""
    from strata.data.base import TensorSplit
    from strata.train.loader import to_device

    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(split), generator=g)[:n].sort().values
    for i in range(0, len(index), batch_size):
        part = index[i:i + batch_size]
        if isinstance(split, TensorSplit):
            batch = {k: v[part] for k, v in split.tensors.items()}
        else:
            items = [split[int(j)] for j in part]
            batch = collate(items) if collate else torch.utils.data.default_collate(items)
        yield to_device(batch, device)


def bag_of_words(tokens: torch.Tensor, lengths: torch.Tensor | None, vocab: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, len(vocab)) counts of the ids in `vocab` among each row's real tokens."""
    B, T = tokens.shape
    V = len(vocab)
    column = torch.full((int(max(tokens.max(), vocab.max())) + 1,), V)  # id -> its column; V: not counted
    column[vocab] = torch.arange(V)
    cols = column[tokens]  # (B, T)
    if lengths is not None:
        cols[torch.arange(T)[None, :] >= lengths[:, None]] = V  # padding
    counts = torch.zeros(B, V + 1).scatter_add_(1, cols, torch.ones(B, T))
    return counts[:, :V]


def collect(task, stages: list[Stage], batches, max_features: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({stage name: (N, D) pooled features, "input": the raw input's}, labels (N,)) over `batches`.
    Token-id inputs keep their ids here; `probe_curve` turns them into a bag of words."""
    key = getattr(task, "input_key", "x")
    feats: dict[str, list[torch.Tensor]] = {INPUT: []}
    lengths_seen, labels = [], []
    with Catch(stages) as caught, torch.no_grad():
        for batch in batches:
            caught.outputs.clear()
            task.validation_step(batch)
            x, lengths = batch[key], batch.get("lengths")
            steps = x.shape[1] if x.dim() >= 2 else None
            feats[INPUT].append(x.cpu() if not x.is_floating_point() else pooled(x, lengths, steps, max_features))
            lengths_seen.append(None if lengths is None else lengths.cpu())
            for s in stages:
                if s.name in caught.outputs:
                    f = pooled(caught.outputs[s.name], lengths, steps, max_features)
                    feats.setdefault(s.name, []).append(f.cpu())
            labels.append(batch["y"].cpu())
    out = {}
    for name, parts in feats.items():
        if name == INPUT and not parts[0].is_floating_point():
            width = max(p.shape[1] for p in parts)
            ids = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
            lens = None if lengths_seen[0] is None else torch.cat(lengths_seen)
            out[name] = (ids, lens)  # turned into counts once the vocabulary of the train sample is known
        else:
            out[name] = torch.cat(parts).numpy()
    return out, torch.cat(labels).numpy()


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 max_iter: int = 200) -> float:
    """Test accuracy of a logistic regression on standardised features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe capped at max_iter is still a probe
        clf.fit(scaler.transform(x_train), y_train)
    return float((clf.predict(scaler.transform(x_test)) == y_test).mean())


def probe_curve(task, stages: list[Stage], train_batches, test_batches, max_features: int = 2048,
                max_iter: int = 200) -> dict:
    """{"layers": [{"layer", "kind", "features", "test_acc"}, ...] from layer 0 (the input) to the
    output, "train_examples", "test_examples", "seconds"}."""
    t0 = time.perf_counter()
    train, y_train = collect(task, stages, train_batches, max_features)
    test, y_test = collect(task, stages, test_batches, max_features)
    kinds = {INPUT: "bag of words" if isinstance(train[INPUT], tuple) else "raw input"}
    kinds.update({s.name: s.kind for s in stages})
    if isinstance(train[INPUT], tuple):  # token ids: a bag of the train sample's most frequent ids
        ids, lens = train[INPUT]
        real = ids if lens is None else ids[torch.arange(ids.shape[1])[None, :] < lens[:, None]]
        vocab = torch.bincount(real.flatten()).argsort(descending=True)[:BAG_OF_WORDS]
        train[INPUT], test[INPUT] = (bag_of_words(*d[INPUT], vocab).numpy() for d in (train, test))
    layers = []
    for name in [INPUT] + [s.name for s in stages if s.name in train]:
        acc = linear_probe(train[name], y_train, test[name], y_test, max_iter=max_iter)
        layers.append({"layer": name, "kind": kinds[name], "features": int(train[name].shape[1]),
                       "test_acc": round(acc, 4)})
    return {"layers": layers, "train_examples": int(len(y_train)), "test_examples": int(len(y_test)),
            "seconds": round(time.perf_counter() - t0, 2)}


def draw_probe_curve(curve: dict, out, title: str = "") -> Path:
    """The probe curve as a PNG: test accuracy per layer, layer 0 = the raw input."""
    from strata.report.plots import _plt

    plt = _plt()
    layers = curve["layers"]
    accs = [r["test_acc"] for r in layers]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(range(len(layers)), accs, "o-", color="tab:blue")
    for i, a in enumerate(accs):
        ax.annotate(f"{a:.1%}", (i, a), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xticks(range(len(layers)), [f"{i}\n{r['layer']}" for i, r in enumerate(layers)], fontsize=8)
    ax.set_xlabel("layer (0 = the raw input)")
    ax.set_ylabel("linear-probe test accuracy")
    lo, hi = min(accs), max(accs)
    span = hi - lo + 0.01
    ax.set_ylim(max(0.0, lo - 0.1 * span), hi + 0.12 * span)  # room above the highest label
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 1])  # no accuracy above 100 %
    ax.grid(alpha=0.3)
    ax.set_title(title or f"linear probes: {curve['train_examples']:,} train / {curve['test_examples']:,} test "
                          "examples", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
