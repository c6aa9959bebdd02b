"""The run folder: what `strata train` leaves behind and everything after training reads.

    config.toml        the fully resolved config
    info.json          what the model was built from (shapes, classes, vocabulary)
    metrics.jsonl      one JSON object per event (train, val, test, early_stop, interrupted)
    metrics.csv        the same figures, one row per number (event, step, epoch, time, name, value)
    summary.json       final metrics, wall time, device, torch version, seed, weights_sha256
    checkpoints/last/  the newest state, for --resume (see strata/train/checkpoint.py)
    checkpoints/best/  the weights with the best validation value of trainer.monitor
    tensorboard/       event files, with [trainer] tensorboard = true
    <artefacts>        files a data set saves for later use (a tokenizer, target statistics)

This class is the one place that knows those names; the trainer writes through it and loading,
evaluation, pretraining, judging and plots read through it.
"""

from __future__ import annotations

import json
from pathlib import Path

from strata.errors import StrataError
from strata.files import atomic_write


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.info = self.path / "info.json"
        self.metrics = self.path / "metrics.jsonl"
        self.metrics_csv = self.path / "metrics.csv"
        self.summary = self.path / "summary.json"
        self.tensorboard = self.path / "tensorboard"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # --- where things are ---------------------------------------------------------------------------
    def artefact(self, name: str) -> Path:
        return self.path / name

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
        from strata.config import load_config

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
