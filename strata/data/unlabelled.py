"""Training batches of labelled and unlabelled examples together, for tasks that learn from both
(semi-supervised learning: strata/tasks/semi_supervised.py).

With `[data] unlabelled = true`, the training examples that `labels_per_class` (or `limit`) leave out
are kept without their labels. A loader marks which training examples keep theirs (DataBundle.labelled);
`with_unlabelled` then rebuilds the training split so that every item holds one labelled example and
`unlabelled_ratio` (mu) unlabelled ones:

    {"x": (C, H, W), "y": (), "u": (mu, C, H, W)}   ->  batches {"x": (B, ...), "y": (B,), "u": (B, mu, ...)}

An epoch is one pass over the unlabelled examples (grouped mu to an item in a seeded order); the few
labelled examples are cycled, each appearing equally often. The split stays a TensorSplit, so it lives
on the training device, resumes mid-epoch exactly and shards across processes like any other.

Only the labelled examples' labels are read: the unlabelled ones' `y` entries are never touched (a
test scrambles them and trains to identical weights).
"""

from __future__ import annotations

import numpy as np
import torch

from strata.data.base import DataBundle, TensorSplit
from strata.errors import ConfigError, DataError


def with_unlabelled(bundle: DataBundle, data_cfg, name: str) -> DataBundle:
    """The bundle with its training split rebuilt as labelled + unlabelled items (see the module doc)."""
    if bundle.labelled is None or not isinstance(bundle.train, TensorSplit):
        raise ConfigError(f"[data] unlabelled: data set '{name}' cannot keep unlabelled examples yet; it works "
                          "with mnist, fashion_mnist, digits, image_folder, csv and Python arrays")
    tensors = bundle.train.tensors
    mask = torch.as_tensor(np.asarray(bundle.labelled, dtype=bool))
    labelled, pool = mask.nonzero().flatten(), (~mask).nonzero().flatten()
    ratio = data_cfg.unlabelled_ratio
    if len(pool) == 0 and not (data_cfg.labels_per_class or data_cfg.limit or name == "python"):
        raise ConfigError("[data] unlabelled keeps the training examples that labels_per_class or limit leave out, "
                          "but neither is set; e.g. labels_per_class = 10 labels ten examples of each class and "
                          "leaves the rest unlabelled")
    if len(labelled) == 0:
        raise DataError("[data] unlabelled: no training example keeps its label; raise labels_per_class or limit")
    if len(pool) < ratio:
        fix = "mark more examples of y with -1" if name == "python" else "lower labels_per_class or limit"
        raise DataError(f"[data] unlabelled: only {len(pool)} training examples are left unlabelled, fewer than "
                        f"unlabelled_ratio = {ratio}; {fix}, or lower unlabelled_ratio")
    g = torch.Generator().manual_seed(data_cfg.split_seed + 31)
    items = len(pool) // ratio  # the remainder (< ratio examples) is left out
    groups = pool[torch.randperm(len(pool), generator=g)[: items * ratio]].view(items, ratio)
    cycled = labelled[torch.arange(items) % len(labelled)]
    out = {k: v[cycled] for k, v in tensors.items()}  # "x", "y" (and any other keys) of the labelled examples
    out["u"] = tensors["x"][groups.flatten()].view(items, ratio, *tensors["x"].shape[1:])
    info = {**bundle.info, "unlabelled": {"labelled": int(len(labelled)), "unlabelled": int(items * ratio),
                                          "ratio": ratio}}
    return DataBundle(train=TensorSplit(out), val=bundle.val, test=bundle.test, info=info, collate=bundle.collate,
                      artifacts=bundle.artifacts)
