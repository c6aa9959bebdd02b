"""Seeded, stratified splits shared by every data set: which examples are held out for val/test,
and which subset `[data] limit` and `[data] labels_per_class` keep. They depend only on the labels
and `split_seed`, never on the trainer's seed, so the held-out examples stay the same across runs
and are never trained on.
"""

from __future__ import annotations

import numpy as np

from strata.errors import DataError


def stratified_order(y: np.ndarray | None, seed: int, n: int | None = None) -> np.ndarray:
    """A seeded permutation of the indices in which every prefix has (nearly) the class proportions
    of the whole: each example's rank within its class, over the class size, is its sort key.
    With y=None (regression, unlabeled) it is a plain seeded permutation of range(n)."""
    rng = np.random.default_rng(seed)
    if y is None:
        return rng.permutation(n)
    y = np.asarray(y)
    perm = rng.permutation(len(y))
    yp = y[perm]
    key = np.empty(len(y), dtype=np.float64)
    for c in np.unique(yp):
        at = np.flatnonzero(yp == c)
        key[at] = (np.arange(len(at)) + rng.random()) / len(at)
    return perm[np.argsort(key, kind="stable")]


def is_classes(y: np.ndarray | None, max_classes: int = 1000) -> bool:
    """Whether y looks like class labels (integers with few distinct values), worth stratifying on."""
    return y is not None and np.issubdtype(np.asarray(y).dtype, np.integer) and len(np.unique(y)) <= max_classes


def hold_out(y: np.ndarray | None, fraction: float, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) index arrays, `held` being round(fraction * N) examples, stratified on class labels."""
    n = len(y) if y is not None else n
    order = stratified_order(y if is_classes(y) else None, seed, n)
    k = int(round(fraction * n))
    return np.sort(order[k:]), np.sort(order[:k])


def limit(index: np.ndarray, y: np.ndarray | None, count: int, seed: int) -> np.ndarray:
    """At most `count` of `index` (0 = all), a seeded stratified subset, in ascending order."""
    if count <= 0 or count >= len(index):
        return index
    sub = y[index] if y is not None and is_classes(y) else None
    order = stratified_order(sub, seed + 1, len(index))
    return np.sort(index[order[:count]])


def per_class(index: np.ndarray, y: np.ndarray | None, count: int, seed: int) -> np.ndarray:
    """Exactly `count` of `index` from every class (0 = all), seeded, in ascending order: the
    "N labels per class" subsets of semi-supervised benchmarks, which a proportional `limit` only
    approximates when the classes are of unequal size."""
    if count <= 0:
        return index
    if y is None or not is_classes(y):
        raise DataError("[data] labels_per_class needs a data set with class labels; "
                        "use [data] limit to cap the training examples of this one")
    sub = np.asarray(y)[index]
    classes, sizes = np.unique(sub, return_counts=True)
    if sizes.min() < count:
        c, n = classes[sizes.argmin()], sizes.min()
        raise DataError(f"[data] labels_per_class = {count}, but class {c} has only {n} training examples; "
                        f"lower it to at most {n}")
    rng = np.random.default_rng(seed + 2)
    keep = [rng.permutation(np.flatnonzero(sub == c))[:count] for c in classes]
    return np.sort(index[np.concatenate(keep)])


def training_subset(index: np.ndarray, y: np.ndarray | None, data_cfg) -> np.ndarray:
    """The training examples a run keeps: `labels_per_class` of each class, then at most `limit`."""
    index = per_class(index, y, data_cfg.labels_per_class, data_cfg.split_seed)
    return limit(index, y, data_cfg.limit, data_cfg.split_seed)


def check_training_left(n_train: int, data_cfg) -> None:
    """A val_fraction that leaves fewer than 2 training examples names itself (not batch_size)."""
    if data_cfg.val_fraction > 0 and n_train < 2:
        from strata.errors import ConfigError

        raise ConfigError(f"[data] val_fraction: {data_cfg.val_fraction} leaves {n_train} training example(s); "
                          "hold out less (0.1 keeps nine tenths for training)")


def train_val_test(y: np.ndarray | None, data_cfg, test_fraction: float | None, n: int | None = None,
                   pool: bool = False):
    """Index arrays (train, val, test) over one pool of examples: test carved first (when
    test_fraction is given), then val from the rest with data_cfg.val_fraction, then
    data_cfg.labels_per_class and data_cfg.limit applied to what is left for training. val or test
    is None when it would be empty.

    pool=True (loaders that can keep unlabelled examples) returns (train, val, test, labelled): with
    data_cfg.unlabelled, train is every training example and `labelled` marks, over train, the ones
    labels_per_class / limit keep (the others are used without their labels); otherwise labelled is None."""
    n = len(y) if y is not None else n
    rest, test = np.arange(n), None
    if test_fraction:
        rest, test = hold_out(y, test_fraction, data_cfg.split_seed, n)
    val = None
    if data_cfg.val_fraction > 0:
        keep, held = hold_out(None if y is None else y[rest], data_cfg.val_fraction, data_cfg.split_seed + 7919,
                              len(rest))
        rest, val = rest[keep], rest[held]
        check_training_left(len(rest), data_cfg)
    val, test = (None if a is None or not len(a) else a for a in (val, test))
    train = training_subset(rest, y, data_cfg)
    if not pool:
        return train, val, test
    if not getattr(data_cfg, "unlabelled", False):
        return train, val, test, None
    return rest, val, test, np.isin(rest, train)
