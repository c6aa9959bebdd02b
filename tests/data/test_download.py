"""Download + checksum + cache: local and HTTP mirrors, refusal of bad files, clear missing-data errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from strata.config import DataConfig
from strata.data import DATASETS, load_data
from strata.data.download import cached_path, download, fetch, sources, verify
from strata.errors import DataError, StrataError

LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
LABELS_SHA = "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache for one test."""
    monkeypatch.setenv("STRATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def http_mirror(mirror):
    """The mirror folder served on 127.0.0.1 by http.server in a thread, for the test's duration."""
    if not Path(mirror).is_dir():
        pytest.skip(f"the HTTP test serves a local mirror folder; STRATA_DATA_MIRROR is {mirror}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=mirror)
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_fetch_from_local_mirror_then_cache_hit(mirror, monkeypatch):
    path = fetch(LABELS, LABELS_SHA)
    assert path == cached_path(LABELS) and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LABELS_SHA
    monkeypatch.setenv("STRATA_DATA_MIRROR", "/nonexistent/mirror")  # a hit must not need the mirror
    assert fetch(LABELS, LABELS_SHA) == path


def test_download_and_verify_over_http(http_mirror, home, monkeypatch):
    monkeypatch.setenv("STRATA_DATA_MIRROR", http_mirror)
    assert {s["status"] for s in verify("mnist")} == {"missing"}
    status = download("mnist", quiet=True)
    assert [s["status"] for s in status] == ["downloaded"] * 4, status
    assert all(s["status"] == "ok" for s in verify("mnist"))
    assert [s["status"] for s in download("mnist", quiet=True)] == ["cached"] * 4
    bundle = load_data(DataConfig(name="mnist", limit=100))
    assert len(bundle.train) == 100 and len(bundle.test) == 10000


def test_http_missing_file_names_the_url(http_mirror, home, monkeypatch):
    monkeypatch.setenv("STRATA_DATA_MIRROR", http_mirror)
    with pytest.raises(DataError) as e:
        fetch("mnist/no-such-file.gz", "0" * 64, quiet=True)
    assert f"{http_mirror}mnist/no-such-file.gz" in str(e.value)
    assert files_under(home) == []


def test_checksum_mismatch_is_refused(tmp_path, home, monkeypatch):
    bad = tmp_path / "mirror" / LABELS
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the real labels")
    got = hashlib.sha256(b"not the real labels").hexdigest()
    monkeypatch.setenv("STRATA_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(DataError) as e:
        fetch(LABELS, LABELS_SHA, quiet=True)
    msg = str(e.value)
    assert LABELS in msg and LABELS_SHA in msg and got in msg
    assert files_under(home) == []  # no partial or wrong file left in the cache


def test_corrupt_cached_file_is_fetched_again(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("STRATA_HOME", str(tmp_path))
    cached_path(LABELS).parent.mkdir(parents=True)
    cached_path(LABELS).write_bytes(b"bit rot")
    path = fetch(LABELS, LABELS_SHA, quiet=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LABELS_SHA


def test_missing_data_says_what_where_and_how(tmp_path, home, monkeypatch):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("STRATA_DATA_MIRROR", str(empty))
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="mnist"))
    msg = str(e.value)
    for part in ("'mnist'", "train-images-idx3-ubyte.gz", str(empty), str(home), "STRATA_DATA_MIRROR",
                 "strata datasets download mnist"):
        assert part in msg, (part, msg)


def test_without_a_mirror_the_upstream_urls_are_used(monkeypatch):
    monkeypatch.delenv("STRATA_DATA_MIRROR", raising=False)
    assert all(u.startswith("http") and u.endswith("/t10k-labels-idx1-ubyte.gz") for u in sources(LABELS))
    assert len(sources(LABELS)) >= 2
    monkeypatch.setenv("STRATA_DATA_MIRROR", "/a; http://b.example/x/;file:///c")
    assert sources(LABELS) == [f"/a/{LABELS}", f"http://b.example/x/{LABELS}", f"/c/{LABELS}"]


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(StrataError, match="did you mean 'mnist'"):
        load_data(DataConfig(name="mnsit"))
    with pytest.raises(StrataError, match="did you mean 'fashion_mnist'"):
        verify("fashion-mnist")


def test_every_registered_file_is_described():
    for name, spec in DATASETS.items():
        assert spec.description and spec.license and spec.splits, name
        for f in spec.files:
            assert len(f.sha256) == 64 and f.bytes > 0 and "/" in f.path, (name, f)


def test_interrupted_download_leaves_nothing(home, monkeypatch):
    class Dropped:
        """A response that delivers one chunk and then loses the connection."""

        def __init__(self, *a, **k):
            self.sent = False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError("connection reset by peer")
            self.sent = True
            return b"x" * 1000

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr("urllib.request.urlopen", Dropped)
    monkeypatch.setenv("STRATA_DATA_MIRROR", "http://127.0.0.1:9/")
    with pytest.raises(DataError, match="connection reset by peer"):
        fetch(LABELS, LABELS_SHA, quiet=True)
    assert files_under(home) == []
