"""Fixtures of the `strata serve` tests: a small trained MNIST CNN (one per session), a server
started as `python -m strata serve` on a free loopback port, and real MNIST test digits as PNG bytes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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


def train_tiny(tmp_path_factory, config, name: str, *overrides: str) -> Path:
    """A run trained in-process from a recipe (a file in recipes/) or a config dict; returns its folder."""
    from strata.api import train

    run_dir = tmp_path_factory.mktemp("runs") / name
    train(REPO / "recipes" / config if isinstance(config, str) else config, list(overrides), run_dir=run_dir,
          device="cpu")
    return run_dir


@pytest.fixture(scope="session")
def mnist_cnn_run(session_mirror, tmp_path_factory) -> Path:
    """recipes/mnist-cnn.toml trained one epoch on 3,000 images (about 30 s on one core, the 10,000 test
    images' evaluation included; ~80 % test accuracy)."""
    return train_tiny(tmp_path_factory, "mnist-cnn.toml", "mnist-cnn", "data.limit=3000", "trainer.max_epochs=1",
                      "data.val_fraction=0.02", "trainer.sanity_val_batches=0", "trainer.progress=off")


def run_coroutine(coroutine):
    """asyncio.run(coroutine) in a thread of its own: once a browser test has started Playwright, its
    event loop keeps running in the main thread, where asyncio.run refuses to start another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def tiny_runs(session_mirror, tmp_path_factory) -> dict[str, Path]:
    """Runs trained for a few steps (about 20 s together), for what serving does with each kind of run:
    lm (a char LSTM on tiny Shakespeare), gan (a class-conditional DCGAN on MNIST), table (an MLP on a
    CSV of a number and a category: label pos when x > 0), ml (matrix factorisation on MovieLens 100k),
    fsdd (a GRU on spoken digits)."""
    quick = {"max_epochs": 1, "max_steps": 3, "progress": "off", "seed": 0, "sanity_val_batches": 0}
    lm = {"name": "lm", "data": {"name": "shakespeare", "block_size": 32, "stride": 32, "batch_size": 16,
                                 "limit": 200},
          "model": {"name": "rnn_lm", "hidden": 32, "layers": 1, "dropout": 0.0}, "task": {"name": "language_model"},
          "optimizer": {"name": "adamw", "lr": 3e-3}, "trainer": quick}
    gan = {"name": "gan", "data": {"name": "mnist", "batch_size": 16, "limit": 64, "val_fraction": 0.01},
           "model": {"name": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8, "conditional": True},
           "task": {"name": "gan"}, "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
           "trainer": quick}
    table = tmp_path_factory.mktemp("table") / "rows.csv"
    rng = np.random.default_rng(0)
    table.write_text("x,color,label\n" + "".join(f"{x:.3f},{rng.choice(['red', 'blue'])},{'pos' if x > 0 else 'neg'}\n"
                                                for x in rng.normal(size=200)))
    csv = {"name": "table", "data": {"name": "csv", "path": str(table), "target": "label", "batch_size": 32},
           "model": {"name": "mlp", "hidden": [16]}, "task": {"name": "classify"},
           "optimizer": {"name": "adam", "lr": 1e-2}, "trainer": {**quick, "max_steps": 0, "max_epochs": 5}}
    sst = {"name": "sst", "data": {"name": "sst2", "batch_size": 32, "limit": 300, "vocab_size": 300,
                                   "val_fraction": 0.05, "max_len": 64},
           "model": {"name": "rnn_classifier", "cell": "gru", "hidden": 8, "embed_dim": 8}, "task": {"name": "sequence_classify"},
           "trainer": quick}
    return {"lm": train_tiny(tmp_path_factory, lm, "lm"), "gan": train_tiny(tmp_path_factory, gan, "gan"),
            "table": train_tiny(tmp_path_factory, csv, "table"),
            "ml": train_tiny(tmp_path_factory, "movielens-mf.toml", "ml", "trainer.max_epochs=1",
                             "trainer.max_steps=3", "model.dim=8"),
            "fsdd": train_tiny(tmp_path_factory, "fsdd-gru.toml", "fsdd", "trainer.max_epochs=1", "trainer.max_steps=2",
                               "model.hidden=8", "model.layers=1", "data.limit=64"),
            "sst": train_tiny(tmp_path_factory, sst, "sst")}


def spoken_digit(index: int = 0) -> tuple[bytes, str]:
    """A recording of the Free Spoken Digit Dataset as .wav bytes, and its file name (its digit first)."""
    from strata.data import DATASETS

    path = sorted(DATASETS.get("fsdd").recordings())[index]
    return path.read_bytes(), path.name


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
    The server's output goes to a log file: shown when it fails to start, and kept as `proc.output`
    (with `proc.returncode`) once it has stopped."""
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
                proc.send_signal(signal.SIGINT)  # Ctrl-C
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.seek(0)
            proc.output = log.read()


@pytest.fixture(scope="session")
def serve_process():
    """`running_server` as a fixture, for tests in other files: `with serve_process([run]) as (url, proc):`."""
    return running_server


@pytest.fixture(scope="session")
def digit_png(session_mirror):
    """`mnist_digit` as a fixture: digit_png(i) -> (PNG bytes of MNIST test image i, its label)."""
    return mnist_digit
