"""Data bigger than memory: image folders and CSV tables read example by example from their files,
through DataLoader workers, instead of decoded whole into memory.

    [data]
    stream = "auto"    # true: always stream; false: always decode into memory; "auto": stream only
                       # when the decoded data would take more than half of the available memory
    num_workers = 0    # processes that read and decode streamed examples (0: the training process)

Held in memory is the index, not the data: the file paths (image folders), or each row's byte offset
and the target column (CSV). Batches are the same, tensor for tensor and in the same order, as those
of the in-memory path; the trainer's (epoch, batch) position resumes them exactly (train/loader.py).

The facts a model is built from come without a second copy of the data:
- images: `background` and the `normalize` statistics are computed from a seeded sample of at most
  SAMPLE training images (all of them when there are fewer, which gives the in-memory figures exactly);
- CSV: a first streaming read records the row offsets, the target and which columns hold text; a
  second reads the training rows for the numeric means/stds (merged chunk by chunk, Chan et al. 1979)
  and the category vocabularies. A table of at most CHUNK training rows gives the in-memory
  statistics bit for bit; a longer one agrees to rounding.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from strata.config import check
from strata.data.base import DataBundle
from strata.errors import ConfigError, DataError

MEMORY_FRACTION = 0.5  # "auto" streams data whose decoded size exceeds this share of the available memory
SAMPLE = 2000  # training images the image statistics are computed from
CHUNK = 16384  # CSV rows decoded at a time while scanning
# A CSV table read whole holds every cell as a Python string in a list of rows, then in object arrays:
# about 18 bytes of memory per byte of file (peak growth 118 MB for a 6.3 MB table of 100,000 rows of
# 7 numbers and 3 words).
CSV_MEMORY_PER_BYTE = 18
GZIP_RATIO = 4  # CSV text compresses about 4 to 1: the size a .gz table takes decompressed, for "auto"


@dataclass(frozen=True)
class StreamOptions:
    """[data] keys of the sets that can stream (image_folder, csv); their Configs extend this."""

    stream: bool | str = "auto"  # true | false | "auto": stream when the decoded data would not fit
    num_workers: int = 0  # DataLoader worker processes for streamed splits; 0 reads in the training process

    def __post_init__(self):
        check(self.stream in ("auto", True, False), "[data] stream",
              f'must be true, false or "auto" (stream only data too big for memory), got {self.stream!r}')
        check(self.num_workers >= 0, "[data] num_workers",
              f"must be >= 0 (0 reads in the training process; 2 to 8 worker processes for streamed data), "
              f"got {self.num_workers}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def streams(opts: StreamOptions, decoded_bytes: int, what: str) -> bool:
    """Whether to stream `what`, which decoded in memory would take `decoded_bytes`."""
    if opts.stream != "auto":
        return bool(opts.stream)
    free = available_memory()
    if free is None or decoded_bytes <= MEMORY_FRACTION * free:
        return False
    print(f"strata: streaming {what} from disk: decoded it would take {decoded_bytes / 2**30:.1f} GiB, more than "
          f"half of the {free / 2**30:.1f} GiB of memory available ([data] stream = false holds it in memory)",
          file=sys.stderr)
    return True


def refuse_unlabelled(data_cfg) -> None:
    if getattr(data_cfg, "unlabelled", False):
        raise ConfigError("[data] unlabelled: the unlabelled examples are drawn from memory, and this data set is "
                          "streamed from disk; set [data] stream = false, or drop unlabelled")


class Streamed(Dataset):
    """A split read example by example from files. `num_workers` is how many DataLoader worker
    processes the trainer reads it with (train/loader.py)."""

    num_workers = 0


# ---------------------------------------------------------------------------------------------
# Image folders


class ImageFiles(Streamed):
    """Item i: {"x": float32 (C, H, W), "y": int64}, the image read, converted, resized and normalised
    exactly as the in-memory path does it (images.load_image, images.apply_normalize)."""

    def __init__(self, paths: list, labels: np.ndarray, channels: int, size: int, normalize: dict | None,
                 num_workers: int = 0):
        # One bytes array, not a list of str objects: worker processes read it without touching reference
        # counts, so forked copies of a long list do not each grow to its full size.
        self.paths = np.array([os.fsencode(str(p)) for p in paths])
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.channels, self.size, self.num_workers = channels, size, num_workers
        self.stats = None if not normalize else (torch.tensor(normalize["mean"], dtype=torch.float32).view(-1, 1, 1),
                                                 torch.tensor(normalize["std"], dtype=torch.float32).view(-1, 1, 1))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from strata.data.images import load_image

        x = torch.from_numpy(load_image(os.fsdecode(self.paths[i]), self.channels, self.size))
        if self.stats is not None:
            x = (x - self.stats[0]) / self.stats[1]  # the training split's per-channel mean and std
        return {"x": x, "y": self.labels[i]}


def image_files_bundle(parts: dict, class_names: list[str], cfg) -> DataBundle:
    """DataBundle of ImageFiles from {"train": (paths, labels), "val": ... | None, "test": ... | None};
    `info` from a seeded sample of the training images."""
    from strata.data.images import image_info, load_image

    paths, _ = parts["train"]
    pick = np.arange(len(paths))
    if len(paths) > SAMPLE:
        pick = np.sort(np.random.default_rng(0).choice(len(paths), SAMPLE, replace=False))
    resized = []
    x = np.stack([load_image(paths[i], cfg.channels, cfg.image_size, say=resized.append) for i in pick])
    if resized:
        print(f"strata: resized {len(resized)} of {len(pick)} sampled training images to {cfg.image_size}x"
              f"{cfg.image_size}; streamed images are resized as they are read", file=sys.stderr)
    info = image_info(x, class_names, cfg.normalize)

    def split(k):
        if parts.get(k) is None:
            return None
        return ImageFiles(*parts[k], cfg.channels, cfg.image_size, info["normalize"], cfg.num_workers)

    return DataBundle(train=split("train"), val=split("val"), test=split("test"), info=info)


# ---------------------------------------------------------------------------------------------
# CSV tables


def csv_rows(f, delimiter: str, where: str):
    """(start, end, fields) of each row of a binary CSV file with content, header included; start and
    end are byte offsets, so the row can be read again with f.seek(start); f.read(end - start)."""
    pos, start, pending = 0, 0, b""
    try:
        for line in f:
            if not pending:
                start = pos
            pos += len(line)
            pending += line
            if pending.count(b'"') % 2:  # inside a quoted field that goes on over the next line
                continue
            fields = parse_row(pending, delimiter, bom=start == 0)
            pending = b""
            if any(c.strip() for c in fields):
                yield start, pos, fields
        if pending.strip():
            yield start, pos, parse_row(pending, delimiter, bom=start == 0)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{where} cannot be read: {e}") from None


def parse_row(raw: bytes, delimiter: str, bom: bool = False) -> list[str]:
    text = raw.decode("utf-8-sig" if bom else "utf-8")  # utf-8-sig: the byte-order mark some editors write
    return next(csv.reader([text], delimiter=delimiter), [])


class CsvRows(Streamed):
    """Item i: (the row's feature fields, its target), read from the file at the row's byte offset;
    EncodeRows turns a list of them into a batch, with the statistics in `info`."""

    def __init__(self, path: Path, starts: np.ndarray, ends: np.ndarray, columns: list[int], y: torch.Tensor,
                 delimiter: str, num_workers: int = 0):
        self.path, self.starts, self.ends, self.columns, self.y = str(path), starts, ends, columns, y
        self.delimiter, self.num_workers = delimiter, num_workers
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        if self._pid != os.getpid():  # each worker process opens its own handle
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        self._file.seek(int(self.starts[i]))
        fields = parse_row(self._file.read(int(self.ends[i] - self.starts[i])), self.delimiter)
        return [fields[j].strip() for j in self.columns], self.y[i]

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}


class EncodeRows:
    """collate: a list of CsvRows items -> {"x", "cat" (encoding = "index"), "y"}, encoded like the
    in-memory table (tables.encode)."""

    def __init__(self, names: list[str], info: dict):
        self.names, self.info = names, info

    def __call__(self, items):
        from strata.data.tables import encode

        cols = {name: np.array([fields[j] for fields, _ in items], dtype=object) for j, name in enumerate(self.names)}
        return {**encode(cols, self.info), "y": torch.stack([y for _, y in items])}


class Moments:
    """Count, mean and sum of squared deviations of a stream of numbers, merged chunk by chunk:
    M2 = M2_a + M2_b + delta^2 n_a n_b / n (Chan, Golub and LeVeque 1979). One chunk gives numpy's
    mean and std exactly."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, v: np.ndarray) -> None:
        if not len(v):
            return
        mean = v.sum() / len(v)
        m2 = float(((v - mean) ** 2).sum())
        if self.n == 0:
            self.n, self.mean, self.m2 = len(v), float(mean), m2
            return
        n = self.n + len(v)
        delta = float(mean) - self.mean
        self.mean += delta * len(v) / n
        self.m2 += m2 + delta * delta * self.n * len(v) / n
        self.n = n

    def stats(self, name: str) -> dict:
        std = math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        return {"name": name, "mean": self.mean if self.n else 0.0, "std": std if std > 0 else 1.0}


def _chunks(rows):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _columns(rows: list[list[str]], names: list[str]) -> dict[str, np.ndarray]:
    """{name: stripped strings} of rows of fields, as tables.read_csv gives them."""
    return {name: np.array([r[j].strip() for r in rows], dtype=object) for j, name in enumerate(names)}


def load_csv_streamed(data_cfg, cfg, path: Path) -> DataBundle:
    """The csv data set without reading the table into memory: two streaming reads (see the module
    docstring), then splits of CsvRows encoded batch by batch."""
    from strata.data import splits as S
    from strata.data.tables import _missing, _numbers, check_columns, table_info, target_values

    refuse_unlabelled(data_cfg)
    where = f"CSV file {path}"
    if path.suffix == ".gz":
        raise DataError(f"{where} is gzip-compressed, and its rows cannot be read at an offset; decompress it "
                        f"(gunzip {path.name}) and point [data] path at the .csv, or set [data] stream = false")
    with _open(path) as f:
        rows = csv_rows(f, cfg.delimiter, where)
        header = next(rows, None)
        names = [h.strip() for h in header[2]] if header else []
        if names:
            check_columns(path, cfg, names)
        features = [c for c in names if c != cfg.target and c not in cfg.drop]
        numeric_all = dict.fromkeys(names, True)  # no text in any row: refused when it holds inf
        numeric_kept = dict.fromkeys(features, True)  # no text in the rows with a target: a numeric feature
        first_inf: dict[str, tuple[int, str]] = {}
        starts, ends, targets, seen = [], [], [], 0
        for chunk in _chunks(rows):
            for i, (_, _, fields) in enumerate(chunk, start=seen + 2):
                if len(fields) != len(names):
                    raise DataError(f"{where} line {i}: {len(fields)} fields, the header has {len(names)}")
            cols = _columns([fields for _, _, fields in chunk], names)
            keep = ~_missing(cols[cfg.target])
            for name in names:
                if name in cfg.drop or not numeric_all[name]:
                    continue
                v = _numbers(cols[name])
                if v is None:
                    numeric_all[name] = False
                elif name not in first_inf and np.isinf(v).any():
                    at = int(np.flatnonzero(np.isinf(v))[0])
                    first_inf[name] = (seen + at, cols[name][at])
            for name in features:
                numeric_kept[name] = numeric_kept[name] and _numbers(cols[name][keep]) is not None
            starts.append(np.array([r[0] for r in chunk], dtype=np.int64)[keep])
            ends.append(np.array([r[1] for r in chunk], dtype=np.int64)[keep])
            targets.append(cols[cfg.target][keep])
            seen += len(chunk)
    if not seen:
        raise DataError(f"{where} has no data rows; expected a header row then one row per example")
    for name in names:
        if numeric_all[name] and name in first_inf:
            row, value = first_inf[name]
            raise DataError(f"{where}: column '{name}' row {row + 1} is {value!r}, not a finite number; "
                            "replace it with a number, or leave the cell empty to mark it missing")
    target = np.concatenate(targets)
    if len(target) < 2:
        raise DataError(f"{where}: fewer than 2 rows with a value in '{cfg.target}'")
    kind, y, class_names = target_values(target, cfg)
    categorical = set(cfg.categorical) if cfg.categorical is not None else {c for c in features if not numeric_kept[c]}
    for name in features:
        if name not in categorical and not numeric_kept[name]:
            raise DataError(f"column '{name}' holds text but is not in [data] categorical; add it there "
                            f"or to [data] drop")
    train, val, test = S.train_val_test(y if kind == "class" else None, data_cfg, cfg.test_fraction or None, n=len(y))
    info = fit_streamed(path, cfg, names, features, categorical, np.isin(np.arange(len(y)), train))
    width = len(info["numeric"]) + (sum(len(c["values"]) + 1 for c in info["categorical"])
                                    if cfg.encoding == "onehot" else 0)
    table_info(info, cfg, width, kind, class_names, y[train])
    starts, ends, yt = np.concatenate(starts), np.concatenate(ends), torch.from_numpy(y)
    columns = [names.index(c) for c in features]

    def split(idx):
        if idx is None or not len(idx):
            return None
        return CsvRows(path, starts[idx], ends[idx], columns, yt[torch.from_numpy(idx)], cfg.delimiter,
                       cfg.num_workers)

    return DataBundle(train=split(train), val=split(val), test=split(test), info=info,
                      collate=EncodeRows(features, info))


def fit_streamed(path: Path, cfg, names: list[str], features: list[str], categorical: set[str],
                 is_train: np.ndarray) -> dict:
    """tables.fit_info from a second streaming read: the statistics of the training rows (is_train
    marks them among the rows with a target), CHUNK rows at a time."""
    from strata.data.tables import MISSING, _numbers, describe

    numeric = {c: Moments() for c in features if c not in categorical}
    vocab = {c: set() for c in features if c in categorical}

    def fit(rows):
        cols = _columns(rows, names)
        for c, m in numeric.items():
            v = _numbers(cols[c])
            m.add(v[~np.isnan(v)])
        for c, seen in vocab.items():
            seen.update(v for v in cols[c] if v.lower() not in MISSING)

    where, t, kept, chunk = f"CSV file {path}", names.index(cfg.target), 0, []
    with _open(path) as f:
        rows = csv_rows(f, cfg.delimiter, where)
        next(rows)
        for _, _, fields in rows:
            if fields[t].strip().lower() in MISSING:
                continue
            if is_train[kept]:
                chunk.append(fields)
                if len(chunk) == CHUNK:
                    fit(chunk)
                    chunk = []
            kept += 1
    if chunk:
        fit(chunk)
    return describe([m.stats(c) for c, m in numeric.items()],
                    [{"name": c, "values": sorted(v)} for c, v in vocab.items()], cfg.encoding)


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist; set [data] path to your table")
    return open(path, "rb")
