"""The run folder: what `strata train` leaves behind and everything after training reads.

    config.toml        the fully resolved config
    info.json          what the model was built from (shapes, classes, vocabulary)
    metrics.jsonl      one JSON object per event (train, val, test, early_stop, interrupted)
    metrics.csv        the same figures, one row per number (event, step, epoch, time, name, value)
    summary.json       final metrics, wall time, device, torch version, seed, weights_sha256
    checkpoints/last/  the newest state, for --resume (see strata/train/checkpoint.py)
    checkpoints/best/  the weights with the best validation value of trainer.monitor
    tensorboard/       event files, with [trainer] tensorboard = true
    export/            `strata export`: model.onnx or model.pt2, each with <name>.json (its preprocessing)
    features/          `strata features`: filters, feature maps, top patches, the linear-probe curve (features.json)
    report.html        `strata report` (and the end of `strata train`): the run as one self-contained page
    <artefacts>        files a data set saves for later use (a tokenizer, target statistics)
    .strata-run        marks the folder as strata's; locked while a process trains into it

This class is the one place that knows those names; the trainer writes through it and loading,
evaluation, pretraining, judging and plots read through it.

A run folder is owned: training writes only into a folder that is new, empty, or a strata run
(.strata-run, or config.toml with a checkpoint for runs made before the mark), so a mistyped
--run-dir never overwrites a person's files. While a process trains, .strata-run is locked
(fcntl.flock, which the OS releases when the process ends however it ends) and holds that process's
id: a second writer is refused, naming it.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

from strata.errors import CheckpointError, StrataError
from strata.files import atomic_write, remove_temp_files

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; ownership is still checked
    fcntl = None

MARK = ".strata-run"


class RunFolder:
    def __init__(self, path: str | Path):
        self.given = str(path)  # "" would be Path("."): the current folder
        self.path = Path(path)
        self.mark = self.path / MARK
        self._lock_fd: int | None = None
        self._created = False  # by claim(): removed again if nothing is written into it
        self.config = self.path / "config.toml"
        self.info = self.path / "info.json"
        self.metrics = self.path / "metrics.jsonl"
        self.metrics_csv = self.path / "metrics.csv"
        self.summary = self.path / "summary.json"
        self.tensorboard = self.path / "tensorboard"
        self.export = self.path / "export"
        self.features = self.path / "features"
        self.report = self.path / "report.html"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # --- where things are ---------------------------------------------------------------------------
    def artefact(self, name: str) -> Path:
        return self.path / name

    def export_file(self, suffix: str) -> Path:
        """export/model<suffix> (".onnx", ".pt2"), the default of `strata export`."""
        return self.export / f"model{suffix}"

    def checkpoint(self, which: str = "last") -> Path:
        """checkpoints/<which>: 'last' (resume) or 'best' (model selection)."""
        return self.path / "checkpoints" / which

    def has_checkpoint(self, which: str = "last") -> bool:
        return (self.checkpoint(which) / "manifest.json").exists()

    def newest_checkpoint(self, which: str = "best") -> Path:
        """checkpoints/<which> when it holds a checkpoint, else checkpoints/last (a run without a
        validation split has no best)."""
        return self.checkpoint(which) if self.has_checkpoint(which) else self.checkpoint("last")

    # --- what it holds ------------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config.is_file()

    def is_owned(self) -> bool:
        """strata's folder: marked, or a run made before the mark (config.toml and a checkpoint)."""
        return self.mark.is_file() or (self.is_run() and (self.has_checkpoint("last") or self.has_checkpoint("best")))

    def is_finished(self) -> bool:
        """The run wrote its summary: it trained to its end (or stopped early), not interrupted."""
        return self.summary.is_file()

    def require(self) -> "RunFolder":
        """This folder, when it is a run folder; otherwise an error that says what to give instead."""
        if not self.path.is_dir():
            raise StrataError(f"run folder {self.path} does not exist; `strata train CONFIG --run-dir {self.path}` "
                              "creates one")
        if not self.is_run():
            raise StrataError(f"{self.path} is not a strata run folder (no config.toml); give the folder that "
                              "`strata train` wrote")
        return self

    # --- readers ------------------------------------------------------------------------------------
    def read_config(self):
        from strata.build import load_config

        return load_config(self.config)

    def read_info(self) -> dict:
        """info.json ({} when the run has none)."""
        if not self.info.is_file():
            return {}
        try:
            return json.loads(self.info.read_text())
        except (ValueError, OSError) as e:
            raise StrataError(f"{self.info} is unreadable ({e}); it is written by `strata train`: restore it from "
                              "the run folder's backup or train again") from None

    def read_summary(self) -> dict | None:
        return json.loads(self.summary.read_text()) if self.is_finished() else None

    def read_metrics(self) -> list[dict]:
        """The events of metrics.jsonl in order ([] before the first); a line cut short by a crash is
        left out."""
        if not self.metrics.exists():
            return []
        events = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def read_raw_config(self) -> dict:
        """config.toml as a plain dict, before validation."""
        from strata.config import tomllib

        try:
            return tomllib.loads(self.config.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise StrataError(f"{self.config} is not valid TOML ({e}); it is written by strata: train the run "
                              "again") from None

    def data_name(self) -> str | None:
        """The [data] name in config.toml, read without building the config (None if there is none)."""
        if not self.is_run():
            return None
        return self.read_raw_config().get("data", {}).get("name")

    def load_weights(self, which: str = "best"):
        """(weights, checkpoint folder) of checkpoints/<which> (else last, as newest_checkpoint); when
        <which> does not load and `last` does, `last` with a warning."""
        from strata.train.checkpoint import load_checkpoint

        ckpt = self.newest_checkpoint(which)
        try:
            return load_checkpoint(ckpt)[0], ckpt
        except CheckpointError as e:
            last = self.checkpoint("last")
            if ckpt == last or not self.has_checkpoint("last"):
                raise
            warnings.warn(f"{e}; using {last} instead")
            return load_checkpoint(last)[0], last

    # --- taking the folder for a training run (rank 0) ----------------------------------------------
    def claim(self, resume: bool = False) -> "RunFolder":
        """Take this folder for training: refuse a folder that is not strata's (a file, or one holding
        other files), a --resume without a checkpoint, a new run over an old one, and a folder another
        process trains into; then lock it and clear the temp files a killed process left."""
        p = self.path
        if not self.given.strip():
            raise StrataError("--run-dir is empty; name the run folder (e.g. --run-dir runs/try), or leave "
                              "--run-dir out for runs/<name>-<timestamp>")
        if p.exists() and not p.is_dir():
            raise StrataError(f"run folder {p} is a file, not a folder; give a new folder (or a strata run folder) "
                              "as --run-dir")
        try:
            foreign = p.is_dir() and not self.is_owned() and any(p.iterdir())
        except OSError as e:
            raise StrataError(f"run folder {p} cannot be read ({e.strerror or e}); choose another --run-dir") from None
        if foreign:
            raise StrataError(f"{p} is not a strata run folder and is not empty; strata trains only into a new or "
                              f"empty folder or one of its own runs (marked by {MARK}), so nothing there is "
                              "overwritten: choose another --run-dir")
        if resume and not self.has_checkpoint("last"):
            raise CheckpointError(f"--resume: no checkpoint at {self.checkpoint('last')}; drop --resume to start a "
                                  "new run there")
        created = not p.exists()
        self.lock()
        self._created = created
        if not resume and self.has_checkpoint("last"):
            self.unlock()
            raise StrataError(f"run folder {p} already holds a run; add --resume to continue it, or choose another "
                              "--run-dir for a new run")
        for folder in (self.checkpoint("last"), self.checkpoint("best")):
            remove_temp_files(folder)
        remove_temp_files(p, (self.config.name, self.info.name, self.summary.name))
        return self

    def lock(self) -> None:
        """Create the folder and its mark and hold the mark locked, with this process's id in it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.mark, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise self._unwritable(e) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "whose id is not written yet"
                os.close(fd)
                raise StrataError(f"run folder {self.path} is in use by another strata process ({holder}); wait "
                                  "for it to end or stop it, then add --resume (or choose another --run-dir)") from None
            except OSError as e:  # a file system without locks (some network mounts)
                warnings.warn(f"cannot lock {self.mark} ({e.strerror or e}); make sure no other process trains "
                              f"into {self.path}")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise self._unwritable(e) from None
        self._lock_fd = fd

    def _unwritable(self, e: OSError) -> StrataError:
        return StrataError(f"cannot write into run folder {self.path}: {e.strerror or e}; choose a --run-dir on a "
                           "writable disk")

    def unlock(self) -> None:
        """Release the lock; a folder this claim created and nothing was written into is removed."""
        if self._lock_fd is None:
            return
        try:
            if self._created and [e.name for e in self.path.iterdir()] == [MARK]:
                self.mark.unlink()
                self.path.rmdir()
        except OSError:
            pass
        os.close(self._lock_fd)  # closing releases the lock
        self._lock_fd = None

    # --- writers (rank 0 of a training run) ---------------------------------------------------------
    def write_start(self, cfg, info: dict, artefacts: dict[str, bytes | str]) -> None:
        """config.toml, info.json and the data set's artefacts, before the first step."""
        from strata.config import dump_toml

        self.checkpoint().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config, dump_toml(cfg))
        atomic_write(self.info, json.dumps(info, indent=1))
        for name, data in artefacts.items():
            atomic_write(self.artefact(name), data)

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary, json.dumps(summary, indent=1))
