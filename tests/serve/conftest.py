"""Fixtures of the `strata serve` tests: a small trained MNIST CNN (one per session), a server
started as `python -m strata serve` on a free loopback port, and real MNIST test digits as PNG bytes."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
NO_MIRROR = "no data mirror"  # the phrase tests/conftest.py counts in its summary of skips


def mirror_location() -> str | None:
    """As tests/conftest.py: STRATA_DATA_MIRROR, else the shared data sets beside the repository."""
    shared = REPO.parent / "shared" / "datasets"
    return os.environ.get("STRATA_DATA_MIRROR") or (str(shared) if shared.is_dir() else None)


@pytest.fixture(scope="session")
def session_mirror(strata_home) -> Iterator[str]:
    """The data mirror for session-scoped fixtures (tests/conftest.py's `mirror` is per test)."""
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR to a folder laid out like the shared data sets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(strata_home))
        yield where


def train_tiny(tmp_path_factory, recipe: str, name: str, *overrides: str) -> Path:
    """A run trained in-process from a recipe with small overrides; returns its folder."""
    from strata.api import train

    run_dir = tmp_path_factory.mktemp("runs") / name
    train(REPO / "recipes" / recipe, list(overrides), run_dir=run_dir, device="cpu")
    return run_dir


@pytest.fixture(scope="session")
def mnist_cnn_run(session_mirror, tmp_path_factory) -> Path:
    """recipes/mnist-cnn.toml trained one epoch on 3,000 images (about 20 s on one core; ~80 % test accuracy)."""
    return train_tiny(tmp_path_factory, "mnist-cnn.toml", "mnist-cnn", "data.limit=3000", "trainer.max_epochs=1")


def mnist_digit(index: int = 0) -> tuple[bytes, int]:
    """MNIST test image `index` as PNG bytes, and its true label (needs the data mirror in the env)."""
    from PIL import Image

    from strata.data import DATASETS

    _, _, x, y = DATASETS.get("mnist").arrays()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(x[index], dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue(), int(y[index])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200 and json.load(r).get("status") == "ok"
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextmanager
def running_server(run_dirs, *extra_args: str, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m strata serve RUN_DIR... --port <free> EXTRA_ARGS` on 127.0.0.1 with one torch thread;
    yields (base URL, the process) once /health answers, and stops it (SIGINT, then kill) afterwards.
    The server's output goes to a log file whose text is shown when it fails to start."""
    port = free_port()
    cmd = [sys.executable, "-m", "strata", "serve", *map(str, run_dirs), "--port", str(port), *extra_args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"strata serve did not start (exit {proc.poll()}):\n{log.read()[-4000:]}")
                time.sleep(0.1)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(2)  # SIGINT: Ctrl-C
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="session")
def serve_process():
    """`running_server` as a fixture, for tests in other files: `with serve_process([run]) as (url, proc):`."""
    return running_server


@pytest.fixture(scope="session")
def digit_png(session_mirror):
    """`mnist_digit` as a fixture: digit_png(i) -> (PNG bytes of MNIST test image i, its label)."""
    return mnist_digit
