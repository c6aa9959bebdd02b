"""Your own table: a CSV file (optionally .gz) with a header row and one target column.

Numeric columns are standardised with the training split's mean/std (missing values -> the mean,
i.e. 0). Categorical columns (listed in `categorical`, or auto-detected: any column with a value
that is not a number) become one-hot blocks appended to x (`encoding = "onehot"`, what an MLP
takes), or integer codes under batch["cat"] for embeddings (`encoding = "index"`); code 0 is a
value unseen in training or missing. Every statistic lives in `info`, so `strata predict` encodes
new rows the same way. Missing values: empty, NA, NaN, ?, null. A table too big for memory is read
row by row at recorded byte offsets (`stream`, `num_workers`: data/streaming.py).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from strata.config import check
from strata.data import DATASETS
from strata.data import splits as S
from strata.data.base import DataBundle, DatasetSpec, TensorSplit, target_stats
from strata.data.streaming import CSV_MEMORY_PER_BYTE, GZIP_RATIO, StreamOptions, load_csv_streamed, streams
from strata.errors import DataError

MISSING = {"", "na", "nan", "?", "null", "none", "n/a"}


@dataclass(frozen=True)
class TableConfig(StreamOptions):  # + stream, num_workers: tables bigger than memory (data/streaming.py)
    path: str = ""  # the CSV file
    target: str = ""  # the column to predict
    categorical: tuple[str, ...] | None = None  # None: every column holding a non-number
    drop: tuple[str, ...] = ()  # columns to ignore (ids, leaks)
    target_kind: Literal["auto", "class", "regression"] = "auto"  # auto: class if text or <= 20 integers
    encoding: Literal["onehot", "index"] = "onehot"
    delimiter: str = ","
    test_fraction: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check(bool(self.path), "[data] path", "missing: the CSV file to read")
        check(bool(self.target), "[data] target", "missing: the name of the column to predict")
        check(len(self.delimiter) == 1, "[data] delimiter", f"must be one character, got {self.delimiter!r}")
        check(0 <= self.test_fraction < 1, "[data] test_fraction", f"must be in [0, 1), got {self.test_fraction}")


def read_csv(path: Path, delimiter: str = ",") -> dict[str, np.ndarray]:
    """Column name -> array of stripped strings, from a CSV with a header row."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist; set [data] path to your table")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig")), delimiter=delimiter))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CSV file {path} cannot be read: {e}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"CSV file {path} has no data rows; expected a header row then one row per example")
    header = [h.strip() for h in rows[0]]
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(f"CSV file {path} line {i}: {len(r)} fields, the header has {len(header)}")
    cols = np.array(rows[1:], dtype=object).T
    return {h: np.array([v.strip() for v in c], dtype=object) for h, c in zip(header, cols)}


def _missing(col: np.ndarray) -> np.ndarray:
    return np.array([v.lower() in MISSING for v in col], dtype=bool)


def _numbers(col: np.ndarray) -> np.ndarray | None:
    """float64 values (NaN where missing), or None when some value is not a number."""
    miss = _missing(col)
    try:
        return np.where(miss, np.nan, np.where(miss, "0", col).astype(np.float64))
    except ValueError:
        return None


def refuse_infinite(cols: dict[str, np.ndarray], where) -> None:
    """inf trains to NaN (NaN, NA, empty are missing values, filled with the mean): name the first one."""
    for name, col in cols.items():
        v = _numbers(col)
        if v is not None and np.isinf(v).any():
            row = int(np.flatnonzero(np.isinf(v))[0])
            raise DataError(f"{where}: column '{name}' row {row + 1} is {col[row]!r}, not a finite number; "
                            "replace it with a number, or leave the cell empty to mark it missing")


def encode(cols: dict[str, np.ndarray], info: dict) -> dict[str, torch.Tensor]:
    """Feature columns -> {"x": (N, F) float32[, "cat": (N, K) int64]} with the statistics in info."""
    n = len(next(iter(cols.values())))
    blocks, codes = [], []
    for c in info["numeric"]:
        v = _numbers(cols[c["name"]]) if c["name"] in cols else np.full(n, np.nan)
        if v is None:
            raise DataError(f"column '{c['name']}' must hold numbers (it did in training), got "
                            f"{list(cols[c['name']][:5])}")
        blocks.append(np.nan_to_num((v - c["mean"]) / c["std"], nan=0.0)[:, None])
    for c in info["categorical"]:
        index = {v: i + 1 for i, v in enumerate(c["values"])}
        col = cols.get(c["name"], np.full(n, "", dtype=object))
        k = np.array([index.get(v, 0) for v in col], dtype=np.int64)
        if info["encoding"] == "onehot":
            blocks.append(np.eye(len(c["values"]) + 1, dtype=np.float32)[k])
        else:
            codes.append(k[:, None])
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
    out = {"x": torch.from_numpy(x.astype(np.float32))}
    if codes:
        out["cat"] = torch.from_numpy(np.concatenate(codes, axis=1))
    return out


def fit_info(cols: dict[str, np.ndarray], categorical: set[str], train: np.ndarray, encoding: str) -> dict:
    """Per-column statistics from the training rows only."""
    numeric, cats = [], []
    for name, col in cols.items():
        if name in categorical:
            values = sorted({v for v in col[train] if v.lower() not in MISSING})
            cats.append({"name": name, "values": values})
            continue
        v = _numbers(col)
        if v is None:
            raise DataError(f"column '{name}' holds text but is not in [data] categorical; add it there "
                            f"or to [data] drop")
        v = v[train]
        ok = v[~np.isnan(v)]
        mean = float(ok.mean()) if len(ok) else 0.0
        std = float(ok.std()) if len(ok) > 1 and ok.std() > 0 else 1.0
        numeric.append({"name": name, "mean": mean, "std": std})
    return describe(numeric, cats, encoding)


def describe(numeric: list[dict], cats: list[dict], encoding: str) -> dict:
    """The encoding's part of `info`, from the per-column statistics (fit_info, or a streaming read)."""
    names = [c["name"] for c in numeric]
    for c in cats:
        names += ([f"{c['name']}=<other>"] + [f"{c['name']}={v}" for v in c["values"]]) if encoding == "onehot" else []
    return {"numeric": numeric, "categorical": cats, "encoding": encoding, "feature_names": names}


def check_columns(path: Path, cfg: TableConfig, columns) -> None:
    """Every column the config names is in the table."""
    for name in (cfg.target, *cfg.drop, *(cfg.categorical or ())):
        if name not in columns:
            from strata.registry import closest

            raise DataError(f"CSV file {path} has no column '{name}'{closest(name, columns)}; "
                            f"columns: {', '.join(columns)}")


def target_values(target: np.ndarray, cfg: TableConfig) -> tuple[str, np.ndarray, list[str] | None]:
    """(kind, y, class_names) of the target column's strings (no missing values): "class" with int64
    codes of the sorted class names, or "regression" with float32 numbers."""
    numbers = _numbers(target)
    kind = cfg.target_kind
    if kind == "auto":
        few_ints = numbers is not None and np.all(numbers == np.round(numbers)) and len(np.unique(numbers)) <= 20
        kind = "class" if numbers is None or few_ints else "regression"
    if kind == "regression":
        if numbers is None:
            raise DataError(f"target column '{cfg.target}' holds text; use target_kind = \"class\"")
        return kind, numbers.astype(np.float32), None
    uniq = sorted(set(target), key=lambda v: (float(v), v)) if numbers is not None else sorted(set(target))
    class_names = list(uniq)
    y = np.searchsorted(np.array(uniq, dtype=object), target) if numbers is None else \
        np.array([class_names.index(v) for v in target])
    return kind, y.astype(np.int64), class_names


def table_info(info: dict, cfg: TableConfig, width: int, kind: str, class_names: list[str] | None, y_train) -> None:
    """Adds to the encoding's `info` what the model and task are built from."""
    info.update({"kind": "table", "in_features": width, "in_shape": [width], "target": cfg.target,
                 "target_kind": kind, "delimiter": cfg.delimiter,
                 "cat_cardinalities": [len(c["values"]) + 1 for c in info["categorical"]]})
    if kind == "class":
        info.update({"num_classes": len(class_names), "class_names": class_names})
    else:
        info.update(num_outputs=1, **target_stats(y_train))


class CsvTable(DatasetSpec):
    Config = TableConfig
    files = ()
    license = "yours"
    description = "Your own CSV table: numeric and categorical columns, one target column"
    splits = "test_fraction then val_fraction carved from the rows (stratified for class targets)"

    def load(self, data_cfg, cfg: TableConfig) -> DataBundle:
        path = Path(cfg.path).expanduser()
        size = path.stat().st_size * (GZIP_RATIO if path.suffix == ".gz" else 1) if path.is_file() else 0
        if streams(cfg, size * CSV_MEMORY_PER_BYTE, f"CSV file {path}"):
            return load_csv_streamed(data_cfg, cfg, path)
        cols = read_csv(path, cfg.delimiter)
        check_columns(path, cfg, cols)
        for name in cfg.drop:
            cols.pop(name)
        refuse_infinite(cols, f"CSV file {path}")
        target = cols.pop(cfg.target)
        keep = ~_missing(target)
        cols, target = {k: v[keep] for k, v in cols.items()}, target[keep]
        if len(target) < 2:
            raise DataError(f"CSV file {path}: fewer than 2 rows with a value in '{cfg.target}'")
        kind, y, class_names = target_values(target, cfg)

        categorical = set(cfg.categorical) if cfg.categorical is not None else \
            {k for k, v in cols.items() if _numbers(v) is None}
        train, val, test, labelled = S.train_val_test(y if kind == "class" else None, data_cfg,
                                                      cfg.test_fraction or None, n=len(y), pool=True)
        info = fit_info(cols, categorical, train, cfg.encoding)
        feats = encode(cols, info)
        table_info(info, cfg, feats["x"].shape[1], kind, class_names, y[train])
        yt = torch.from_numpy(y)

        def split(idx):
            if idx is None or not len(idx):
                return None
            t = torch.from_numpy(idx)
            return TensorSplit({**{k: v[t] for k, v in feats.items()}, "y": yt[t]})

        return DataBundle(train=split(train), val=split(val), test=split(test), info=info, labelled=labelled)

    def encode_inputs(self, inputs, info, run_dir):
        """CSV files with the training columns (the target may be absent), or rows given inline
        as "col=value,col=value"."""
        parts = []
        for item in inputs:
            p = Path(item)
            if p.is_file():
                cols = read_csv(p, info.get("delimiter", ","))
            elif "=" in item:
                pairs = [kv.split("=", 1) for kv in item.split(",") if kv.strip()]
                cols = {k.strip(): np.array([v.strip()], dtype=object) for k, v in pairs}
            else:
                raise DataError(f"input {item!r} is neither a CSV file nor a row like 'age=41,job=admin'")
            known = {c["name"] for c in info["numeric"] + info["categorical"]} | {info["target"]}
            unknown = sorted(set(cols) - known)
            if unknown:
                raise DataError(f"input {item!r} has columns the model was not trained on: {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(known))}")
            refuse_infinite(cols, f"input {item!r}")
            parts.append(encode(cols, info))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


DATASETS.register("csv", CsvTable())
