"""Your own NumPy arrays: an .npz file with `x` (N, ...) and `y` (N,).

Optional `x_val`/`y_val` and `x_test`/`y_test` give those splits; otherwise they are carved from
x/y (test_fraction, then val_fraction). Integer y means classes 0..K-1, float y regression.
x keeps its shape and becomes float32: (N, C, H, W) is an image set (no rescaling: scale it
yourself), (N, F) a table.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from strata.config import check
from strata.data import DATASETS
from strata.data import splits as S
from strata.data.base import DataBundle, DatasetSpec, TensorSplit, target_stats
from strata.errors import DataError


@dataclass(frozen=True)
class ArraysConfig:
    path: str = ""  # the .npz file
    test_fraction: float = 0.2  # carved from x/y when there is no x_test

    def __post_init__(self):
        check(bool(self.path), "[data] path", "missing: the .npz file holding x and y")
        check(0 <= self.test_fraction < 1, "[data] test_fraction", f"must be in [0, 1), got {self.test_fraction}")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"array file {path} does not exist; set [data] path to an .npz with x and y")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); save it with numpy.savez(path, x=..., y=...)") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise DataError(f"{path} has no array '{k}' (it has: {', '.join(arrays) or 'none'}); "
                            f"save it with numpy.savez(path, x=inputs, y=targets)")
    for s in ("", "_val", "_test"):
        if f"x{s}" in arrays or f"y{s}" in arrays:
            x, y = arrays.get(f"x{s}"), arrays.get(f"y{s}")
            if x is None or y is None or len(x) != len(y) or y.ndim != 1:
                raise DataError(f"{path}: x{s} and y{s} must both exist with the same length and y{s} "
                                f"one-dimensional; got x{s} {None if x is None else list(x.shape)}, "
                                f"y{s} {None if y is None else list(y.shape)}")
            if x.shape[1:] != arrays["x"].shape[1:]:
                raise DataError(f"{path}: x{s} has examples of shape {list(x.shape[1:])}, x has {list(arrays['x'].shape[1:])}")
    return arrays


class NumpyArrays(DatasetSpec):
    Config = ArraysConfig
    files = ()
    license = "yours"
    description = "Your own arrays: an .npz with x (N, ...) and y (N,)"
    splits = "x_val/x_test when present; else test_fraction and val_fraction carved from x"

    def load(self, data_cfg, cfg: ArraysConfig) -> DataBundle:
        a = read_npz(Path(cfg.path).expanduser())
        x, y = a["x"], a["y"]
        classes = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
        test_fraction = None if "x_test" in a else (cfg.test_fraction or None)
        dc = replace(data_cfg, val_fraction=0.0) if "x_val" in a else data_cfg
        train, val, test = S.train_val_test(y if classes else None, dc, test_fraction, n=len(y))

        def split(xs, ys):
            yt = torch.from_numpy(ys.astype(np.int64 if classes else np.float32))
            return TensorSplit({"x": torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32)), "y": yt})

        parts = {k: None if idx is None or not len(idx) else split(x[idx], y[idx])
                 for k, idx in (("train", train), ("val", val), ("test", test))}
        for k in ("val", "test"):
            if f"x_{k}" in a:
                parts[k] = split(a[f"x_{k}"], a[f"y_{k}"])
        for name, arr in a.items():  # NaN or inf trains to NaN: refuse it here, naming where it is
            bad = ~np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
            if bad is not None and bad.any():
                raise DataError(f"{cfg.path}: {name} holds {int(bad.sum()):,} NaN or inf values (the first at "
                                f"index {[int(i) for i in np.argwhere(bad)[0]]}); fill or drop them before training")
        if parts["train"] is None:
            raise DataError(f"{cfg.path}: no training examples left after carving val/test from {len(y)}")

        shape = list(x.shape[1:])
        info = {"in_shape": shape, "in_features": int(np.prod(shape)), "kind": "array"}
        if len(shape) == 3:
            info.update(kind="image", in_channels=shape[0], image_size=shape[1] if shape[1] == shape[2] else shape[1:])
        elif len(shape) == 1:
            info["kind"] = "table"
        if classes:
            ys = [y] + [a[f"y_{k}"] for k in ("val", "test") if f"y_{k}" in a]
            lo, k = min(int(v.min()) for v in ys), max(int(v.max()) for v in ys) + 1
            if lo < 0:
                raise DataError(f"{cfg.path}: integer y must be class indices 0..K-1, found {lo}")
            info.update(num_classes=k, class_names=[str(i) for i in range(k)])
        else:
            info.update(num_outputs=1, **target_stats(parts["train"].tensors["y"]))
        return DataBundle(train=parts["train"], val=parts["val"], test=parts["test"], info=info)

    def encode_inputs(self, inputs, info, run_dir):
        """.npy files (one example, or a batch) or .npz files with x, shaped like the training x."""
        return {"x": torch.from_numpy(np.ascontiguousarray(read_inputs(inputs, info["in_shape"]), dtype=np.float32))}


def read_inputs(inputs, in_shape) -> np.ndarray:
    """The examples in .npy files (one example, or a batch) or .npz files holding x, as one batch
    shaped (N, *in_shape)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.suffix not in (".npy", ".npz") or not p.is_file():
            raise DataError(f"input {item} is not an existing .npy or .npz file")
        try:
            if p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    x = z["x"]
            else:
                x = np.load(p, allow_pickle=False)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{p} is not a readable .npy, or an .npz holding x ({e})") from None
        if in_shape is not None and list(x.shape) == list(in_shape):
            x = x[None]
        if in_shape is not None and list(x.shape[1:]) != list(in_shape):
            raise DataError(f"{p}: examples of shape {list(x.shape)}, the model takes {list(in_shape)} "
                            f"(or a batch of them)")
        out.append(x)
    return np.concatenate(out)


DATASETS.register("numpy", NumpyArrays())
