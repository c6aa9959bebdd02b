"""ETT (Electricity Transformer Temperature), hourly: time-series forecasting.

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting",
AAAI 2021. ETTh1 and ETTh2 are two stations, one row per hour from July 2016 to June 2018: six
power-load features (HUFL, HULL, MUFL, MULL, LUFL, LULL) and the transformer's oil temperature OT.

Splits, as in Informer, Autoformer, DLinear and PatchTST: the first 12 months (8,640 hours) train,
the next 4 months (2,880) validation, the next 4 test. A validation or test window starts with the
last `input_len` hours before its split, so every hour it predicts belongs to the split.

An example is a window: x = the past `input_len` hours of the input columns, standardised with the
training split's mean and standard deviation; y = the next `horizon` hours of the target column(s)
in their own units (degrees C for OT), flattened hour by hour to (horizon * targets,). `features`
picks the columns, as in the papers: "MS" all seven in, OT out (the default); "S" OT in, OT out;
"M" all in, all out. The targets' training mean and std are in info, so the `regress` task fits
standardised targets: its `loss` (with loss = "mse") is the standardised MSE that papers report,
while its mse / mae / rmse are in degrees.

Batches: {"x": (B, input_len, F) float32, "y": (B, horizon * K) float32}, for a sequence model
(`rnn_classifier`, whose head gives the horizon * K numbers) or an `mlp` (which flattens x).
`strata predict RUN_DIR recent.csv` takes a CSV with the input columns (a date column is ignored)
and at least input_len rows, and forecasts the hours after its last row.
"""

from __future__ import annotations

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

COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
FILES = {
    "ETTh1": RemoteFile("ett/ETTh1.csv", "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066", 2589657),
    "ETTh2": RemoteFile("ett/ETTh2.csv", "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b", 2417960),
}
TRAIN_HOURS, VAL_HOURS, TEST_HOURS = 12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24  # 8640, 2880, 2880


@dataclass(frozen=True)
class ETTConfig:
    file: Literal["ETTh1", "ETTh2"] = "ETTh1"
    input_len: int = 96  # hours of history per example
    horizon: int = 24  # hours to forecast
    features: Literal["MS", "S", "M"] = "MS"  # MS: all in, target out; S: target in and out; M: all in and out
    target: Literal["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"] = "OT"
    stride: int = 1  # hours between the starts of consecutive training windows

    def __post_init__(self):
        check(1 <= self.input_len <= 2000, "[data] input_len", f"must be between 1 and 2000 hours, got {self.input_len}")
        check(1 <= self.horizon <= 720, "[data] horizon", f"must be between 1 and 720 hours, got {self.horizon}")
        check(self.stride >= 1, "[data] stride", f"must be >= 1, got {self.stride}")


def read_table(raw: bytes, where: str, need: tuple[str, ...]) -> np.ndarray:
    """CSV bytes with a header naming (at least) the columns `need` -> (rows, len(need)) float64."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise DataError(f"{where}: empty; expected a CSV with a header row ({', '.join(('date',) + COLUMNS)})")
    header = [h.strip() for h in text.splitlines()[0].split(",")]
    missing = [c for c in need if c not in header]
    if missing:
        raise DataError(f"{where}: no column {', '.join(missing)}; the header has {', '.join(header)} "
                        f"(needed: {', '.join(need)})")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64, ndmin=2,
                           usecols=[header.index(c) for c in need])
    except ValueError as e:
        raise DataError(f"{where}: the columns {', '.join(need)} must hold numbers ({e})") from None
    if not np.isfinite(table).all():
        raise DataError(f"{where}: missing or non-finite values in {', '.join(need)}")
    return table


def columns(cfg: ETTConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input columns, target columns) for the features setting."""
    if cfg.features == "S":
        return (cfg.target,), (cfg.target,)
    ordered = tuple(c for c in COLUMNS if c != cfg.target) + (cfg.target,)  # the target last, as the papers do
    return ordered, (ordered if cfg.features == "M" else (cfg.target,))


def windows(series: torch.Tensor, starts: np.ndarray, length: int) -> torch.Tensor:
    """(T, F) series -> (len(starts), length, F) windows beginning at `starts`."""
    idx = torch.as_tensor(starts, dtype=torch.long)[:, None] + torch.arange(length)[None, :]
    return series[idx]


class ETT(DatasetSpec):
    Config = ETTConfig
    files = tuple(FILES.values())
    license = "CC BY-ND 4.0 (Zhou et al., github.com/zhouhaoyi/ETDataset)"
    description = "ETT hourly: electricity transformer oil temperature and loads, forecasting windows"
    splits = "chronological: 12 months train, 4 validation, 4 test (val_fraction is not used)"

    def load(self, data_cfg, cfg: ETTConfig) -> DataBundle:
        remote = FILES[cfg.file]
        path = fetch(remote.path, remote.sha256, dataset="ett")
        inputs, targets = columns(cfg)
        table = read_table(path.read_bytes(), str(path), COLUMNS)
        if len(table) < TRAIN_HOURS + VAL_HOURS + TEST_HOURS:
            raise DataError(f"{path}: {len(table)} hours; the standard split needs "
                            f"{TRAIN_HOURS + VAL_HOURS + TEST_HOURS}")
        col = {c: i for i, c in enumerate(COLUMNS)}
        train_rows = table[:TRAIN_HOURS]
        mean, std = train_rows.mean(0), train_rows.std(0)
        std = np.where(std > 0, std, 1.0)
        x_all = torch.from_numpy(((table - mean) / std)[:, [col[c] for c in inputs]].astype(np.float32))
        y_all = torch.from_numpy(table[:, [col[c] for c in targets]].astype(np.float32))

        L, H = cfg.input_len, cfg.horizon
        bounds = {"train": (0, TRAIN_HOURS), "val": (TRAIN_HOURS, TRAIN_HOURS + VAL_HOURS),
                  "test": (TRAIN_HOURS + VAL_HOURS, TRAIN_HOURS + VAL_HOURS + TEST_HOURS)}

        def split(name: str) -> TensorSplit | None:
            lo, hi = bounds[name]
            first = max(lo - L, 0) if name != "train" else 0  # history may reach into the split before
            starts = np.arange(first, hi - L - H + 1, cfg.stride if name == "train" else 1)
            if name == "train":
                starts = starts[S.training_subset(np.arange(len(starts)), None, data_cfg)]
            if not len(starts):
                return None
            x = windows(x_all, starts, L)  # (N, L, F)
            y = windows(y_all, starts + L, H).reshape(len(starts), -1)  # (N, H * K), hour by hour
            return TensorSplit({"x": x, "y": y})

        train = split("train")
        if train is None:
            raise DataError(f"[data] input_len + horizon = {L + H} hours leaves no training window in "
                            f"{TRAIN_HOURS} hours")
        t_mean = [float(mean[col[c]]) for c in targets] * H
        t_std = [float(std[col[c]]) for c in targets] * H
        info = {"kind": "timeseries", "in_shape": [L, len(inputs)], "in_features": len(inputs),
                "num_outputs": H * len(targets), "target_mean": t_mean, "target_std": t_std,
                "inputs": list(inputs), "targets": list(targets), "input_len": L, "horizon": H,
                "input_mean": [float(mean[col[c]]) for c in inputs],
                "input_std": [float(std[col[c]]) for c in inputs], "file": cfg.file,
                "target_input_index": [inputs.index(c) for c in targets] * H}
        return DataBundle(train=train, val=split("val"), test=split("test"), info=info)

    def encode_inputs(self, inputs: list[str], info: dict, run_dir: Path) -> dict[str, torch.Tensor]:
        """CSV files with the input columns and at least input_len rows: one window each, its last
        input_len rows, standardised with the training statistics."""
        L, cols = info["input_len"], tuple(info["inputs"])
        out = []
        for item in inputs:
            p = Path(item)
            if p.suffix.lower() != ".csv" or not p.is_file():
                raise DataError(f"input {item} is not an existing .csv file; give a CSV with the columns "
                                f"{', '.join(cols)} and at least {L} hourly rows")
            table = read_table(p.read_bytes(), str(p), cols)
            if len(table) < L:
                raise DataError(f"{item}: {len(table)} rows; the model reads the last {L} hours, so give at least {L}")
            z = (table[-L:] - np.array(info["input_mean"])) / np.array(info["input_std"])
            out.append(torch.from_numpy(z.astype(np.float32)))
        return {"x": torch.stack(out)}


DATASETS.register("ett", ETT())
