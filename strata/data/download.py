"""Files of registered data sets: fetched from a mirror into a local cache, verified by SHA-256.

Where files come from, first match wins:
  1. the cache, `cache_dir()/datasets/<relpath>` (STRATA_HOME, default ~/.cache/strata); a hit is
     trusted when a sidecar `<file>.sha256` records the same hash, size and mtime, else re-hashed;
  2. STRATA_DATA_MIRROR: a local folder (or file:// URL) or an http(s) URL laid out like the relpaths
     (`mnist/train-images-idx3-ubyte.gz`); several may be given, separated by ';';
  3. when STRATA_DATA_MIRROR is unset, the canonical public mirrors known for that file.
A download is written to a temporary file beside its target, hashed on the way, fsync'ed and only
then renamed into place, so an interrupted or corrupt transfer never lands in the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from strata.errors import DataError
from strata.files import atomic_write

CHUNK = 1 << 20
TIMEOUT_S = 30.0

# Public copies of the upstream files, by relpath prefix (the rest of the relpath is the file name).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "mnist/": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist/": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its path inside a mirror, its SHA-256 and its size in bytes."""

    path: str
    sha256: str
    bytes: int = 0


def cache_dir() -> Path:
    """Root of the local cache: $STRATA_HOME, else ~/.cache/strata."""
    home = os.environ.get("STRATA_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "strata"


def cached_path(relpath: str) -> Path:
    return cache_dir() / "datasets" / relpath


def mirrors() -> list[str]:
    """The mirrors named by STRATA_DATA_MIRROR (';'-separated), or [] when it is unset."""
    value = os.environ.get("STRATA_DATA_MIRROR", "")
    return [m.strip() for m in value.split(";") if m.strip()]


def sources(relpath: str) -> list[str]:
    """Every place `relpath` is looked for, in order: local paths or URLs."""
    bases = mirrors()
    if bases:
        return [_join(b, relpath) for b in bases]
    out = []
    for prefix, urls in UPSTREAM.items():
        if relpath.startswith(prefix):
            out += [u + relpath[len(prefix):] for u in urls]
    return out


def _join(base: str, relpath: str) -> str:
    if base.startswith("file://"):
        base = base[len("file://"):]
    if _is_url(base):
        return base.rstrip("/") + "/" + relpath
    return str(Path(base).expanduser() / relpath)


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The cache


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _cache_ok(path: Path, sha256: str) -> bool:
    """True when the cached file exists and has the expected hash (re-hashed unless the sidecar vouches)."""
    if not path.is_file():
        return False
    side = _sidecar(path)
    try:
        if side.read_text().split(" ", 1) == [sha256, _stamp(path)]:
            return True
    except (OSError, ValueError):
        pass
    if sha256_of(path) != sha256:
        return False
    try:
        atomic_write(side, f"{sha256} {_stamp(path)}".encode())
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return True


class _Mismatch(Exception):
    pass


def _copy_verified(src: str, dest: Path, sha256: str) -> None:
    """Copy a local path or URL to `dest` through a temp file; raise _Mismatch on a wrong hash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            if _is_url(src):
                reader = urllib.request.urlopen(src, timeout=TIMEOUT_S)
            else:
                reader = open(src, "rb")
            with reader:
                while chunk := reader.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sha256:
            raise _Mismatch(got)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write(_sidecar(dest), f"{sha256} {_stamp(dest)}".encode())


def _how_to_get(dataset: str | None) -> str:
    cli = f"`strata datasets download {dataset}`" if dataset else "`strata datasets download NAME`"
    return (f"set STRATA_DATA_MIRROR to a folder or http(s) URL that holds the files under these relative "
            f"paths (like the shared datasets/ folder), then run {cli} or rerun")


def fetch(relpath: str, sha256: str, *, dataset: str | None = None, quiet: bool = False) -> Path:
    """The verified local path of `relpath`, downloading it into the cache when needed.

    Raises DataError when no source has it (naming every place looked in and how to get it), or
    when a source has a file whose hash differs (naming the file and both hashes)."""
    dest = cached_path(relpath)
    if _cache_ok(dest, sha256):
        return dest
    if dest.exists() and not quiet:
        print(f"strata: cached {dest} does not match its SHA-256; fetching it again", file=sys.stderr)
    who = f"data set '{dataset}': " if dataset else ""
    tried = []
    for src in sources(relpath):
        if not _is_url(src) and not Path(src).is_file():
            tried.append(f"{src} (no such file)")
            continue
        if not quiet:
            print(f"strata: fetching {relpath} from {src}", file=sys.stderr)
        try:
            _copy_verified(src, dest, sha256)
            return dest
        except _Mismatch as e:
            raise DataError(
                f"{who}file {relpath} from {src} has SHA-256 {e.args[0]}, expected {sha256}; refused (nothing was "
                f"written to the cache). The mirror's copy is corrupt or a different version: replace it, or "
                f"point STRATA_DATA_MIRROR at another mirror"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            tried.append(f"{src} ({reason})")
    where = "; ".join(tried) if tried else "no mirror: STRATA_DATA_MIRROR is unset and no public mirror is known"
    raise DataError(
        f"{who}file {relpath} is missing: not in the cache ({dest}) and not found at: {where}. "
        f"To get it, {_how_to_get(dataset)}"
    )


# ---------------------------------------------------------------------------------------------
# For `strata datasets verify|download NAME`


def _files(name: str) -> tuple[RemoteFile, ...]:
    from strata.data import DATASETS

    return tuple(DATASETS.get(name).files)


def verify(name: str) -> list[dict]:
    """Status of every file of data set `name` in the cache: ok | missing | corrupt (no download)."""
    out = []
    for f in _files(name):
        path = cached_path(f.path)
        if not path.is_file():
            status = "missing"
        else:
            status = "ok" if _cache_ok(path, f.sha256) else "corrupt"
        out.append({"path": f.path, "status": status, "where": str(path), "bytes": f.bytes})
    return out


def download(name: str, quiet: bool = False) -> list[dict]:
    """Fetch every file of data set `name`: one {"path", "status": cached|downloaded|failed, ...} each.
    A failed file carries the DataError text under "error"; the other files are still tried."""
    out = []
    for f in _files(name):
        path = cached_path(f.path)
        was = path.is_file() and _cache_ok(path, f.sha256)
        try:
            fetch(f.path, f.sha256, dataset=name, quiet=quiet)
            out.append({"path": f.path, "status": "cached" if was else "downloaded", "where": str(path)})
        except DataError as e:
            out.append({"path": f.path, "status": "failed", "where": str(path), "error": str(e)})
    return out


def copy_into_cache(src: Path, relpath: str, sha256: str) -> Path:
    """Put a file the user obtained by hand into the cache (verified), e.g. for offline machines."""
    dest = cached_path(relpath)
    try:
        _copy_verified(str(src), dest, sha256)
    except _Mismatch as e:
        raise DataError(f"file {src} has SHA-256 {e.args[0]}, expected {sha256} for {relpath}; refused") from None
    return dest


__all__ = ["RemoteFile", "fetch", "cache_dir", "cached_path", "verify", "download", "sources", "sha256_of",
           "copy_into_cache"]
