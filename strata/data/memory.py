"""Data a person already holds in Python: `(x, y)` arrays or tensors, a torch `Dataset` of tuples or
dicts, or a `DataLoader`, turned into the DataBundle every run trains on (`strata.fit`).

Arrays become a TensorSplit, moved whole to the device and batched by indexing like the shipped
sets. A Dataset is read item by item: `(x, y)` tuples become {"x": x, "y": y}, dicts pass as they are.
What predict needs to encode new inputs as training did (input shape, class names, standardisation)
goes into `info`, which the run folder keeps; the run's config names the data set "python".
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from strata.data import DATASETS
from strata.data import splits as S
from strata.data.arrays import read_inputs
from strata.data.base import DataBundle, DatasetSpec, TensorSplit, target_stats
from strata.errors import DataError

# ---------------------------------------------------------------------------------------------
# Arrays


def as_tensor(a, what: str, notices: list[str] | None = None) -> torch.Tensor:
    """A NumPy array, tensor or nested list -> tensor. float64 becomes float32 (with a notice),
    NaN or inf is refused with its count and first position, strings are refused."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as e:
            raise DataError(f"{what}: cannot be read as an array ({e}); give a NumPy array or a tensor") from None
        if arr.dtype.kind in "USO":
            raise DataError(f"{what}: holds {arr.dtype.kind == 'O' and 'Python objects' or 'strings'}, expected "
                            "numbers; encode it first (class names are accepted only as labels y)")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.int64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 0:
        raise DataError(f"{what}: is a single number; expected one row per example (shape (N, ...))")
    if t.dtype == torch.float64:
        if notices is not None:
            notices.append(f"{what}: float64 cast to float32 (torch trains in float32)")
        t = t.float()
    # A sum is NaN or inf when any value is (or when finite values overflow it: then look closer); it
    # costs a tenth of an elementwise isfinite over the whole array.
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        bad = ~torch.isfinite(t)
        first = [int(i) for i in bad.nonzero()[0]]
        raise DataError(f"{what}: {int(bad.sum()):,} values are NaN or inf (the first at index {first}); "
                        "fill or drop them before training")
    return t


def encode_labels(y, what: str, classify: bool | None, notices: list[str] | None, unlabelled: bool = False):
    """Labels -> (tensor, class_names or None). Strings are classes named by their sorted values;
    integers are classes 0..K-1; floats are regression targets unless classify is asked for.
    unlabelled: -1 marks an example without a label (scikit-learn's convention)."""
    arr = y if isinstance(y, torch.Tensor) else np.asarray(y)
    if not isinstance(arr, torch.Tensor) and arr.dtype.kind in "USO":
        names = sorted({str(v) for v in arr.reshape(-1)})
        index = {n: i for i, n in enumerate(names)}
        return torch.tensor([index[str(v)] for v in arr.reshape(-1)], dtype=torch.long), names
    t = as_tensor(arr, what, notices)
    integral = not t.is_floating_point() or bool((t == t.round()).all())
    if classify is None:
        classify = not t.is_floating_point()
    if not classify:
        return t.float(), None
    if not integral:
        raise DataError(f"{what}: class labels must be whole numbers 0..K-1, got fractional values such as "
                        f"{float(t[t != t.round()][0])}; for numbers to predict use task='regress'")
    if t.ndim != 1:
        raise DataError(f"{what}: class labels must be one number per example, shape (N,), got {list(t.shape)}")
    t = t.long()
    low = -1 if unlabelled else 0
    if len(t) and int(t.min()) < low:
        raise DataError(f"{what}: class labels must be 0..K-1{' or -1 (unlabelled)' if unlabelled else ''}, found "
                        f"{int(t.min())} at index {int((t < low).nonzero()[0])}; map your labels to 0..K-1 first"
                        f"{'' if unlabelled else ' (-1 marks an unlabelled example for task=semi_supervised)'}")
    return t, None


def input_facts(shape: list[int]) -> dict:
    """What a model is sized from: in_shape, in_features, and in_channels / image_size for images."""
    info = {"in_shape": shape, "in_features": int(np.prod(shape)) if shape else 1, "kind": "array"}
    if len(shape) == 3:
        info.update(kind="image", in_channels=shape[0], image_size=shape[1] if shape[1] == shape[2] else shape[1:])
    elif len(shape) == 1:
        info["kind"] = "table"
    elif len(shape) == 2:
        info.update(kind="sequence", in_channels=shape[0])
    return info


def standardisation(x: torch.Tensor) -> dict:
    """Per feature (tables) or per channel (images, sequences): the training split's mean and std."""
    dims = [0] + list(range(2, x.ndim))
    mean, std = x.double().mean(dims), x.double().std(dims, unbiased=False)
    return {"mean": mean.tolist(), "std": torch.where(std > 0, std, torch.ones_like(std)).tolist()}


def standardise(x: torch.Tensor, stats: dict | None) -> torch.Tensor:
    if not stats or not x.is_floating_point():
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = torch.tensor(stats["mean"], dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(stats["std"], dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std


def split_xy(data, what: str):
    """(x, y), [x, y], (x,) or a bare array -> (x, y or None)."""
    if isinstance(data, (tuple, list)) and len(data) in (1, 2) and not isinstance(data[0], numbers.Number):
        return data[0], (data[1] if len(data) == 2 else None)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return data, None
    raise DataError(f"{what}: expected (x, y) arrays, a torch Dataset or DataLoader, a CSV path or a registered "
                    f"data set's config (a dict with name = ...); got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------
# Datasets


class ItemsAsDicts(Dataset):
    """A user's Dataset whose items are (x, y) / (x,) tuples or dicts, seen as dicts of the batch keys."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return as_item(self.data[i], i)


def as_item(item, i: int = 0) -> dict:
    if isinstance(item, dict):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (1, 2):
        return {"x": item[0]} if len(item) == 1 else {"x": item[0], "y": item[1]}
    raise DataError(f"data set item {i} is a {type(item).__name__}; strata reads items that are (x, y) or (x,) "
                    "tuples, or dicts such as {'x': ..., 'y': ...}")


def check_dataset(data: Dataset, what: str) -> dict:
    """The first item as a dict, after checking the set has a length and readable items."""
    try:
        n = len(data)
    except TypeError:
        raise DataError(f"{what}: a {type(data).__name__} without len(); strata needs a map-style Dataset "
                        "(with __len__ and __getitem__) to shuffle and resume exactly") from None
    if n == 0:
        raise DataError(f"{what}: the data set is empty")
    return as_item(data[0])


def labels_of(data: Dataset, n: int) -> np.ndarray | None:
    """Every item's label, for the class count and stratified splits: a `targets` attribute when the
    set has one (torchvision style), else read from the items."""
    targets = getattr(data, "targets", None)
    if targets is not None and len(targets) == n:
        return np.asarray(targets)
    ys = []
    for i in range(n):
        y = as_item(data[i], i).get("y")
        if y is None:
            return None
        y = y.item() if isinstance(y, torch.Tensor) and y.numel() == 1 else y
        if not isinstance(y, numbers.Integral):
            return None
        ys.append(int(y))
    return np.asarray(ys)


# ---------------------------------------------------------------------------------------------
# The bundle


def python_bundle(data, *, val=None, test=None, task: str | None = None, val_split: float = 0.1,
                  split_seed: int = 0, standardize: bool = False, notices: list[str] | None = None):
    """Python objects -> (DataBundle, task name, the batch size of a given DataLoader or None)."""
    batch_size = collate = None
    if isinstance(data, DataLoader):
        batch_size, collate, data = data.batch_size, _user_collate(data.collate_fn), data.dataset
    if isinstance(data, Dataset) and not isinstance(data, TensorSplit):
        if standardize:
            raise DataError("standardize=True works on arrays; standardise inside your Dataset instead")
        task = task or _task_of_dataset(data)
        return _dataset_bundle(data, val, test, task, val_split, split_seed, collate), task, batch_size
    x, y = split_xy(data, "data")
    # Labels are classes for these tasks, numbers for regress, and as their dtype says otherwise.
    classify = {"classify": True, "sequence_classify": True, "semi_supervised": True, "regress": False}.get(task)
    semi = task == "semi_supervised"
    xt = as_tensor(x, "x", notices)
    yt, names = (None, None) if y is None else encode_labels(y, "y", classify, notices, unlabelled=semi)
    if semi and (yt is None or not bool((yt < 0).any())):
        raise DataError("task='semi_supervised' learns from unlabelled examples too, but every example of y has a "
                        "label; mark the unlabelled ones with -1 (scikit-learn's convention)")
    if yt is not None and len(yt) != len(xt):
        raise DataError(f"x and y differ in length: x has {len(xt):,} examples, y has {len(yt):,}; "
                        "give one label per example")
    if task is None:
        if yt is None:
            raise DataError("data has no labels y, so the task cannot be inferred; name it, e.g. "
                            "task='reconstruct' for an autoencoder")
        task = "classify" if not yt.is_floating_point() else "regress"
    classes = yt is not None and not yt.is_floating_point()

    def given(what, part):
        """val= or test= as the user gave it, encoded like the training data."""
        if part is None:
            return None
        px, py = split_xy(part, what)
        px = as_tensor(px, f"{what} x", notices)
        py = None if py is None else encode_with(py, names, classes, f"{what} y", notices)
        if px.shape[1:] != xt.shape[1:]:
            raise DataError(f"{what}: examples of shape {list(px.shape[1:])}, but x has {list(xt.shape[1:])}")
        if py is not None and len(py) != len(px):
            raise DataError(f"{what}: x has {len(px):,} examples, y has {len(py):,}; give one label per example")
        return px, py

    held_xy, test_xy = given("val", val), given("test", test)
    if val is None and val_split > 0:
        # semi-supervised: validation examples come from the labelled ones; every unlabelled one trains
        among = (yt >= 0).nonzero().flatten().numpy() if semi else np.arange(len(xt))
        keep, held = S.hold_out(yt.numpy()[among] if classes else None, val_split, split_seed, len(among))
        keep, held = np.setdiff1d(np.arange(len(xt)), among[held]), among[held]
        if len(held) == 0 or len(keep) == 0:
            raise DataError(f"val_split = {val_split} of {len(xt)} examples leaves an empty split; "
                            "give more examples, another val_split, or val=(x_val, y_val)")
        held_xy = (xt[held], None if yt is None else yt[held])
        xt, yt = xt[keep], None if yt is None else yt[keep]

    info = {**input_facts(list(xt.shape[1:])), "input_dtype": str(xt.dtype).removeprefix("torch.")}
    if standardize:
        if not xt.is_floating_point():
            raise DataError("standardize=True needs real-valued inputs x; these hold integers (token ids?)")
        info["standardize"] = standardisation(xt)
    if classes:
        seen = [t for t in (yt, held_xy and held_xy[1], test_xy and test_xy[1]) if t is not None and len(t)]
        k = max([len(names or [])] + [int(t.max()) + 1 for t in seen])
        info.update(num_classes=k, class_names=names or [str(i) for i in range(k)])
    elif yt is not None:
        info.update(num_outputs=1 if yt.ndim == 1 else int(np.prod(yt.shape[1:])), **target_stats(yt))

    def split(xy):
        if xy is None:
            return None
        tensors = {"x": standardise(xy[0], info.get("standardize"))}
        if xy[1] is not None:
            tensors["y"] = xy[1]
        return TensorSplit(tensors)

    labelled = (yt >= 0).numpy() if semi else None
    return (DataBundle(train=split((xt, yt)), val=split(held_xy), test=split(test_xy), info=info, labelled=labelled),
            task, batch_size)


def encode_with(y, names: list[str] | None, classes: bool, what: str, notices) -> torch.Tensor:
    """Labels of val / test encoded as the training labels were (the same class names)."""
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        values = [str(v) for v in np.asarray(y).reshape(-1)]
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise DataError(f"{what}: labels {unknown[:5]} do not occur in the training labels ({', '.join(names)})")
        return torch.tensor([index[v] for v in values], dtype=torch.long)
    return encode_labels(y, what, classes, notices)[0]


def _user_collate(fn):
    """A DataLoader's own collate_fn, its tuple batches seen as dicts; None for the default."""
    from torch.utils.data import default_collate

    if fn is None or fn is default_collate or getattr(fn, "__name__", "") == "default_collate":
        return None

    def collate(items):
        return as_item(fn(items))

    return collate


def _task_of_dataset(data: Dataset) -> str:
    item = check_dataset(data, "data")
    y = item.get("y")
    if y is None:
        raise DataError("the data set's items hold no label 'y', so the task cannot be inferred; name it, e.g. "
                        "task='reconstruct'")
    if isinstance(y, torch.Tensor):
        return "regress" if y.is_floating_point() else "classify"
    return "classify" if isinstance(y, numbers.Integral) else "regress"


def _dataset_bundle(data: Dataset, val, test, task, val_split, split_seed, collate) -> DataBundle:
    first = check_dataset(data, "data")
    if "x" not in first:
        raise DataError(f"data set items are dicts with keys {sorted(first)}; strata's tasks read the input "
                        "from 'x' (and the label from 'y')")
    x = first["x"]
    shape = list(x.shape) if isinstance(x, torch.Tensor) else list(np.shape(x))
    info = input_facts(shape)
    if isinstance(x, (torch.Tensor, np.ndarray)):
        info["input_dtype"] = str(torch.as_tensor(x).dtype).removeprefix("torch.")
    n = len(data)
    labels = labels_of(data, n) if task in (None, "classify") else None
    wrapped = ItemsAsDicts(data)
    if labels is not None:
        k = int(labels.max()) + 1
        info.update(num_classes=k, class_names=[str(i) for i in range(k)])
    elif "y" in first:
        y = torch.as_tensor(first["y"])
        info.update(num_outputs=max(1, y.numel()))
    if val is None and val_split > 0:
        keep, held = S.hold_out(labels, val_split, split_seed, n)
        from torch.utils.data import Subset

        train, val_ds = Subset(wrapped, keep.tolist()), Subset(wrapped, held.tolist())
    else:
        train, val_ds = wrapped, None if val is None else _as_dataset(val, "val")
    return DataBundle(train=train, val=val_ds, test=None if test is None else _as_dataset(test, "test"), info=info,
                      collate=collate)


def _as_dataset(part, what: str) -> Dataset:
    if isinstance(part, DataLoader):
        part = part.dataset
    if isinstance(part, Dataset):
        check_dataset(part, what)
        return ItemsAsDicts(part)
    x, y = split_xy(part, what)
    tensors = {"x": as_tensor(x, f"{what} x")}
    if y is not None:
        tensors["y"] = encode_labels(y, f"{what} y", None, None)[0]
    return TensorSplit(tensors)


def encode_arrays(x, info: dict, what: str = "inputs") -> torch.Tensor:
    """New inputs for predict, encoded as training encoded x: its dtype, its shape (one example or a
    batch of them), standardised with the training statistics when the run standardised."""
    t = as_tensor(x, what).to(getattr(torch, info.get("input_dtype", "float32")))
    shape = info.get("in_shape")
    if shape is not None and list(t.shape) == list(shape):
        t = t[None]
    if shape is not None and list(t.shape[1:]) != list(shape):
        raise DataError(f"{what}: examples of shape {list(t.shape[1:])}, the model was trained on {list(shape)} "
                        "(give one example or a batch of them)")
    return standardise(t, info.get("standardize"))


class PythonData(DatasetSpec):
    """The data set of a run trained from Python objects: nothing to load from disk, new inputs encoded
    from .npy / .npz files (strata predict) or arrays (Run.predict) as training encoded them."""

    Config = None
    license = "yours"
    description = "Your own arrays, tensors or torch Dataset, given to strata.fit from Python"
    splits = "val= and test= when given; else val_split carved from the training data"

    def load(self, data_cfg, opts) -> DataBundle:
        raise DataError("this run was trained on data given from Python (strata.fit), which strata cannot read "
                        "back from disk; pass the data again: strata.fit(model, data, run_dir=..., resume=True) "
                        "or run.evaluate((x, y))")

    def encode_inputs(self, inputs, info, run_dir: Path):
        return {"x": encode_arrays(read_inputs(inputs, info.get("in_shape")), info)}


DATASETS.register("python", PythonData())
