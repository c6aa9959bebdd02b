"""Files that a crash never leaves half-written: temp file beside the target, fsync, os.replace."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

from strata.errors import storage_error


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write bytes (or text) to `path` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(e, path) or e
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode a plain open() would
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        full = storage_error(e, path) if isinstance(e, OSError) else None
        if full is not None:  # the target, if it existed, is untouched
            raise full from e
        raise
    _fsync_dir(path.parent)


def remove_temp_files(folder: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Delete the temp files atomic_write leaves behind when its process is killed mid-write
    (`.<name>.<random>.tmp`): those of `names`, or all of them. Call it only while no other process
    writes into `folder`."""
    folder = Path(folder)
    patterns = [f".{glob.escape(n)}.*.tmp" for n in names] if names is not None else [".*.tmp"]
    for pattern in patterns:
        for f in folder.glob(pattern):
            try:
                if f.is_file() and not f.is_symlink():
                    f.unlink()
            except OSError:
                pass
