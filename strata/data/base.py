"""What every data set hands the Trainer: splits, the facts a model needs (`info`), and how to turn
raw user inputs (files, sentences) into a batch for `strata predict`.

Batches are dicts of tensors, e.g. {"x": (B, C, H, W), "y": (B,)} or {"tokens": (B, T), "lengths": (B,)}.
A `TensorSplit` (data that fits in memory) is moved whole to the training device and batched by
indexing: no workers, no per-batch host-to-device copies. Any other torch Dataset streams through a
DataLoader with the split's `collate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset


class TensorSplit(Dataset):
    """A split held as a dict of equally long tensors; item i is {key: tensor[i]}."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors of unequal length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}

    def to(self, device) -> "TensorSplit":
        return TensorSplit({k: v.to(device) for k, v in self.tensors.items()})

    def subset(self, index: torch.Tensor) -> "TensorSplit":
        return TensorSplit({k: v[index] for k, v in self.tensors.items()})


def target_stats(y_train) -> dict[str, list[float]]:
    """info for a regression target: the training split's mean and standard deviation per output,
    which the regress task standardises targets with (and saves, so predictions come back in units)."""
    y = torch.as_tensor(y_train, dtype=torch.float64).reshape(len(y_train), -1)
    std = y.std(0, unbiased=False) if len(y) > 1 else torch.ones(y.shape[1], dtype=torch.float64)
    return {"target_mean": y.mean(0).tolist(), "target_std": torch.where(std > 0, std, 1.0).tolist()}


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    # Facts the model and task are built from: in_shape, num_classes, class_names, vocab_size, ...
    # JSON-able; written to the run folder so predict/evaluate can rebuild without the data.
    info: dict[str, Any] = field(default_factory=dict)
    # For streaming splits: list of items -> batch dict (padding lives here).
    collate: Callable | None = None
    # Files to write into the run folder (tokenizer.json, ...): name -> bytes.
    artifacts: dict[str, bytes] = field(default_factory=dict)
    # With [data] unlabelled: a bool mask over `train` of the examples whose labels are kept; the
    # others are used without their labels (strata/data/unlabelled.py puts them into every batch).
    labelled: Any = None


class DatasetSpec:
    """A registered data set. Subclasses set Config (frozen dataclass of their own keys), `files`
    (RemoteFile list, for download/verify), `license`, `description`, and implement load()."""

    Config: type | None = None
    files: tuple = ()
    license: str = ""
    description: str = ""
    splits: str = ""  # human description of the splits, for `strata datasets list`

    def load(self, data_cfg, opts) -> DataBundle:
        raise NotImplementedError

    def encode_inputs(self, inputs: list[str], info: dict, run_dir: Path) -> dict[str, torch.Tensor]:
        """Raw user inputs (paths or text) -> a batch, for `strata predict`. Raise DataError with a
        clear message when an input cannot be used by this kind of model."""
        from strata.errors import DataError

        raise DataError(f"data set '{type(self).__name__}' does not support predict on raw inputs")
