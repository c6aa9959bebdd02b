"""The IDX format of MNIST-style files (LeCun et al.), plain or gzip-compressed.

Layout, big-endian: two zero bytes, a type code, the number of dimensions d, then d uint32 sizes,
then the values in C order. MNIST images: magic 0x00000803, dims (N, 28, 28), uint8 pixels.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from strata.errors import DataError

DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"file {path} is truncated or corrupt: {why}; delete it and fetch it again "
                     f"(`strata datasets download NAME`, or rerun with STRATA_DATA_MIRROR set)")


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in an IDX file (.gz or not); DataError on a bad header, size or stream."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise _corrupt(path, f"gzip stream: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in DTYPES:
        raise _corrupt(path, f"not an IDX file (magic {raw[:4].hex() or 'empty'}, expected 0000TTDD)")
    d = raw[3]
    if ndim is not None and d != ndim:
        raise DataError(f"file {path} holds a {d}-dimensional IDX array, expected {ndim} dimensions")
    head = 4 + 4 * d
    if len(raw) < head:
        raise _corrupt(path, f"header cut short ({len(raw)} bytes)")
    dims = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=d, offset=4))
    dtype = np.dtype(DTYPES[raw[2]])
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != want:
        raise _corrupt(path, f"{len(raw) - head} data bytes for dims {list(dims)}, expected {want}")
    return np.frombuffer(raw, dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_idx_cached(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """read_idx, keeping the decoded array as `<path>.npy` beside it (written atomically) so the
    next load skips the gunzip. A stale or unreadable .npy (older than the file) is rebuilt."""
    path = Path(path)
    npy = path.with_name(path.name + ".npy")
    try:
        if npy.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            arr = np.load(npy, allow_pickle=False)
            if ndim is None or arr.ndim == ndim:
                return arr
    except (OSError, ValueError):
        pass
    arr = read_idx(path, ndim)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{npy.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, npy)
    except OSError:
        if tmp:  # a read-only cache only costs speed
            Path(tmp).unlink(missing_ok=True)
    return arr
