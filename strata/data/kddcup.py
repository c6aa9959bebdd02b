"""KDD Cup 1999 network-intrusion records, a tabular anomaly-detection benchmark.

Stolfo et al., "Cost-based Modeling for Fraud and Intrusion Detection", 2000 (the DARPA 1998
evaluation data, released for the KDD Cup 1999). Each row is one connection: 41 features (3 of
them symbolic: protocol_type, service, flag) and a label, `normal.` or one of 22 attack types
(37 in the test file, some unseen in training).

Splits: val is carved from the 10% training file (data.val_fraction, stratified on normal/attack,
data.split_seed) and keeps both normal and attack rows, so the anomaly threshold and AUROC can be
chosen on it; train is the rest of that file, only its normal rows with `train_on = "normal"` (an
autoencoder learns what normal traffic looks like); test is the `corrected` file (311,029 rows).

Features: numeric columns -> log1p (counts and byte totals span many orders of magnitude), then
standardised with the training split's mean/std; symbolic columns -> one-hot over the values seen
in the training file (an unseen value is an all-zero block). Batches: {"x": (B, D) float32,
"y": (B,) 0 normal / 1 attack, "anomaly": (B,) the same}. Every statistic lives in `info`, so
`strata predict RUN_DIR "0,tcp,http,SF,..."` (or a CSV file of such rows) encodes rows the same way.
"""

from __future__ import annotations

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
from strata.data.base import DataBundle, DatasetSpec, TensorSplit
from strata.data.download import RemoteFile, fetch
from strata.errors import DataError

COLUMNS = (
    "duration protocol_type service flag src_bytes dst_bytes land wrong_fragment urgent hot "
    "num_failed_logins logged_in num_compromised root_shell su_attempted num_root num_file_creations "
    "num_shells num_access_files num_outbound_cmds is_host_login is_guest_login count srv_count "
    "serror_rate srv_serror_rate rerror_rate srv_rerror_rate same_srv_rate diff_srv_rate "
    "srv_diff_host_rate dst_host_count dst_host_srv_count dst_host_same_srv_rate dst_host_diff_srv_rate "
    "dst_host_same_src_port_rate dst_host_srv_diff_host_rate dst_host_serror_rate "
    "dst_host_srv_serror_rate dst_host_rerror_rate dst_host_srv_rerror_rate"
).split()
SYMBOLIC = (1, 2, 3)  # protocol_type, service, flag
NUMERIC = tuple(i for i in range(41) if i not in SYMBOLIC)  # 38 columns (0/1 flags included)
NORMAL = "normal."

TRAIN = RemoteFile("kddcup99/kddcup.data_10_percent.gz",
                   "8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561", 2144903)
TEST = RemoteFile("kddcup99/corrected.gz",
                  "abd8165508378859b07e38537271f0ebf8a4d7319f643188cd7361e939a05c43", 1409035)
NAMES = RemoteFile("kddcup99/kddcup.names",
                   "24ad45a4c5de85cd73bcc81cf4965a58bbf3e83b48c6e6d3b0284119e7d42efd", 1309)


def parse_rows(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CSV bytes of KDD rows (41 features, optionally the label) -> (numeric (N, 38) float64,
    symbolic (N, 3) str, labels (N,) str or None)."""
    text = raw.decode("ascii", errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{where}: no rows; expected comma-separated KDD Cup 99 records (41 features)")
    widths = {ln.count(",") + 1 for ln in lines[:1000]}
    if len(widths) != 1 or widths.pop() not in (41, 42):
        raise DataError(f"{where}: rows must have 41 features (or 42 fields with the label), "
                        f"e.g. '0,tcp,http,SF,181,5450,0,...'; got a row with {lines[0].count(',') + 1} fields")
    buf = io.StringIO("\n".join(lines))
    has_label = lines[0].count(",") == 41
    try:
        num = np.loadtxt(buf, delimiter=",", usecols=NUMERIC, dtype=np.float64, ndmin=2)
        buf.seek(0)
        sym = np.loadtxt(buf, delimiter=",", usecols=SYMBOLIC + ((41,) if has_label else ()), dtype=str, ndmin=2)
    except ValueError as e:
        raise DataError(f"{where}: rows could not be parsed as KDD Cup 99 records ({e})") from None
    return num, sym[:, :3], (sym[:, 3] if has_label else None)


def read_file(path: Path, where: str):
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return parse_rows(raw, where)


def encode(num: np.ndarray, sym: np.ndarray, prep: dict) -> torch.Tensor:
    """Raw columns -> (N, D) float32 features with the training statistics in `prep`."""
    mean, std = np.asarray(prep["mean"]), np.asarray(prep["std"])
    parts = [(np.log1p(np.maximum(num, 0.0)) - mean) / std]
    for j, col in enumerate(("protocol_type", "service", "flag")):
        vocab = {v: i for i, v in enumerate(prep["categories"][col])}
        onehot = np.zeros((len(sym), len(vocab)), dtype=np.float64)
        codes = np.array([vocab.get(v, -1) for v in sym[:, j]])
        seen = codes >= 0
        onehot[np.flatnonzero(seen), codes[seen]] = 1.0
        parts.append(onehot)
    return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))


@dataclass(frozen=True)
class Config:
    train_on: Literal["normal", "all"] = "normal"  # rows of the training file to train on
    max_test: int = 0  # at most this many test rows (seeded stratified subset); 0 = all 311,029

    def __post_init__(self):
        check(self.max_test >= 0, "[data] max_test", f"must be >= 0, got {self.max_test}")


class KDDCup99(DatasetSpec):
    Config = Config
    files = (TRAIN, TEST, NAMES)
    license = "no license file in the UCI KDD Archive release; UCI lists its data sets under CC BY 4.0"
    description = "KDD Cup 1999 network connections, normal vs attack (tabular anomaly detection)"
    splits = "train: 10% file (normal rows) / val: carved from it (normal + attack) / test: corrected (311,029)"

    def load(self, data_cfg, opts) -> DataBundle:
        opts = opts or Config()
        num, sym, lab = read_file(fetch(TRAIN.path, TRAIN.sha256, dataset="kddcup99"), TRAIN.path)
        tnum, tsym, tlab = read_file(fetch(TEST.path, TEST.sha256, dataset="kddcup99"), TEST.path)
        y, ty = (lab != NORMAL).astype(np.int64), (tlab != NORMAL).astype(np.int64)

        rest, val = np.arange(len(y)), None
        if data_cfg.val_fraction > 0:
            keep, val = S.hold_out(y, data_cfg.val_fraction, data_cfg.split_seed + 7919)
            rest = keep
        categories = {c: sorted(set(sym[rest, j])) for j, c in enumerate(("protocol_type", "service", "flag"))}
        train = rest[y[rest] == 0] if opts.train_on == "normal" else rest
        train = S.training_subset(train, y, data_cfg)
        test = S.limit(np.arange(len(ty)), ty, opts.max_test, data_cfg.split_seed)

        logs = np.log1p(np.maximum(num[train], 0.0))
        std = logs.std(axis=0)
        prep = {"mean": logs.mean(axis=0).tolist(), "std": np.where(std > 1e-8, std, 1.0).tolist(),
                "categories": categories}

        def split(n, s, labels, idx):
            if idx is None:
                return None
            lab_t = torch.from_numpy(labels[idx])
            return TensorSplit({"x": encode(n[idx], s[idx], prep), "y": lab_t, "anomaly": lab_t.clone()})

        names = [COLUMNS[i] for i in NUMERIC] + [f"{c}={v}" for c, vs in categories.items() for v in vs]
        info = {
            "kind": "table",
            "in_shape": [len(names)],
            "in_features": len(names),
            "num_classes": 2,
            "class_names": ["normal", "attack"],
            "feature_names": names,
            "kddcup99": prep,
        }
        return DataBundle(train=split(num, sym, y, train), val=split(num, sym, y, val),
                          test=split(tnum, tsym, ty, test), info=info)

    def encode_inputs(self, inputs: list[str], info: dict, run_dir: Path) -> dict[str, torch.Tensor]:
        """Each input is a CSV file of KDD rows or one row given inline ('0,tcp,http,SF,...')."""
        if not inputs:
            raise DataError("no inputs given; pass KDD Cup 99 rows ('0,tcp,http,SF,181,...') or CSV files of them")
        nums, syms = [], []
        for item in inputs:
            if item.count(",") >= 40:
                num, sym, _ = parse_rows(item.encode(), "input row")
            else:
                p = Path(item)
                if not p.is_file():
                    raise DataError(f"{item}: no such file, and not a comma-separated KDD Cup 99 row "
                                    "(41 features)")
                num, sym, _ = read_file(p, str(p))
            nums.append(num)
            syms.append(sym)
        return {"x": encode(np.concatenate(nums), np.concatenate(syms), info["kddcup99"])}


DATASETS.register("kddcup99", KDDCup99())
