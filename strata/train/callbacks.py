"""Callbacks: what happens around the training loop, kept out of it (Keras callbacks, Lightning Fabric's
`fabric.call`). The trainer calls each hook on every callback that defines it, built-ins first
(ReduceOnPlateau, BestCheckpoint, EarlyStopping, then the loggers), then the callbacks passed to
`Trainer(..., callbacks=[...])`, in that order.

Hooks, in the order of a run (every process calls them, unless marked rank 0):

    on_fit_start(trainer)                      set-up and resume done, before the sanity check and the first step
    on_batch_end(trainer, step, loss)          after each optimiser step (every grad_accum batches); `loss` is
                                               that batch's loss, a 0-d tensor still on the device
    on_validation_end(trainer, metrics)        after each validation: {'val/loss': ..., ...}, equal on every process
    on_checkpoint_saved(trainer, which, path)  rank 0, after checkpoints/<which> ('last' or 'best') is written
    on_epoch_end(trainer, metrics)             train/loss of the epoch (and its val/ metrics when it validated)
    on_log(trainer, record)                    rank 0, each record of the run's log: {'event', 'step', 'epoch',
                                               'time', <figures>}; events train, val, test, early_stop, interrupted
    on_fit_end(trainer, summary)               after the test and summary.json
    on_exception(trainer, error)               the run ends with an exception after on_fit_start (Interrupted too)

`on_batch_end` runs every step: reading the loss (`float(loss)`) waits for the device, so a callback
that needs it should read it every N steps, not every step.

A callback stops the run with `trainer.request_stop(reason)`: the trainer stops after the current
step (with several processes: at their next common check, within STOP_CHECK_EVERY steps, and after
each validation), so every process stops at the same step; it saves `last`, tests the best weights,
writes summary.json and returns the summary as a run that ran its course does.

A callback whose state must survive --resume names a `state_key` and returns plain values from
`state_dict()`; they travel in the checkpoint (checkpoints/*/state-*.pt) and come back through
`load_state_dict` before `on_fit_start`, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math

from strata.errors import ConfigError, StrataError


class Callback:
    """Subclass and override the hooks you need; the others cost nothing (they are never called)."""

    state_key: str | None = None  # set by a callback with state that must survive --resume

    def on_fit_start(self, trainer) -> None:
        pass

    def on_batch_end(self, trainer, step: int, loss) -> None:
        pass

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint_saved(self, trainer, which: str, path) -> None:
        pass

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        pass

    def on_log(self, trainer, record: dict) -> None:
        pass

    def on_fit_end(self, trainer, summary: dict) -> None:
        pass

    def on_exception(self, trainer, error: BaseException) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


def hook_table(callbacks) -> dict[str, list]:
    """{hook: the bound methods that override it, in callback order}: a hook no callback defines
    costs the loop one empty loop."""
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise StrataError(f"callbacks: each must be a strata.train.Callback, got {type(cb).__name__}; "
                              "subclass Callback and override the hooks you need")
    return {h: [getattr(cb, h) for cb in callbacks if getattr(type(cb), h) is not getattr(Callback, h)]
            for h in HOOKS}


def monitored(metrics: dict[str, float], monitor: str, where: str) -> float:
    value = metrics.get(monitor)
    if value is None:
        raise ConfigError(f"{where}: '{monitor}' is not among the logged metrics ({', '.join(sorted(metrics))})")
    return value


def improves(value: float, best: float | None, mode: str) -> bool:
    """A value better than the best so far ('min' or 'max'); NaN never is."""
    return not math.isnan(value) and (best is None or (value < best if mode == "min" else value > best))


# --- model selection ----------------------------------------------------------------------------------


class BestCheckpoint(Callback):
    """checkpoints/best: the weights (and state) of the validation with the best `monitor`."""

    state_key = "best_checkpoint"

    def __init__(self, monitor: str = "val/loss", mode: str = "min", where: str = "BestCheckpoint monitor"):
        self.monitor, self.mode, self.where = monitor, mode, where
        self.best: float | None = None

    def on_validation_end(self, trainer, metrics):
        value = monitored(metrics, self.monitor, self.where)
        if improves(value, self.best, self.mode):
            self.best = value
            trainer.save("best")

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state.get("best")


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` validations in a row."""

    state_key = "early_stopping"

    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 3,
                 where: str = "EarlyStopping monitor"):
        if patience < 1:
            raise ConfigError(f"EarlyStopping patience: must be >= 1, got {patience}")
        self.monitor, self.mode, self.patience, self.where = monitor, mode, patience, where
        self.best: float | None = None
        self.bad_validations = 0

    def on_validation_end(self, trainer, metrics):
        value = monitored(metrics, self.monitor, self.where)
        if improves(value, self.best, self.mode):
            self.best, self.bad_validations = value, 0
            return
        self.bad_validations += 1
        if self.bad_validations >= self.patience:
            best = "none" if self.best is None else f"{self.best:.4g}"
            trainer.log("early_stop", best=self.best)
            trainer.request_stop(f"early stopping: {self.monitor} has not improved for {self.bad_validations} "
                                 f"validations (best {best})")

    def state_dict(self):
        return {"best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state):
        self.best, self.bad_validations = state.get("best"), state.get("bad_validations", 0)


class ReduceOnPlateau(Callback):
    """Hands each validation's `monitor` to the schedules that follow it ([schedule] name = "plateau");
    the schedule keeps its own state (patience, best, lr) and travels in the checkpoint with it."""

    def __init__(self, monitor: str = "val/loss", where: str = "ReduceOnPlateau monitor"):
        self.monitor, self.where = monitor, where

    def on_validation_end(self, trainer, metrics):
        value = monitored(metrics, self.monitor, self.where)
        for s in trainer.schedules.values():
            s.validated(value)


# --- logs (rank 0) ------------------------------------------------------------------------------------

_HEAD = ("event", "step", "epoch", "time")


class _Sink(Callback):
    """A log open from the start of the fit (rank 0) and closed at its end, also after an error."""

    def __init__(self):
        self._out = None

    def on_fit_end(self, trainer, summary):
        self.close()

    def on_exception(self, trainer, error):
        try:
            self.close()
        except OSError:  # a full disk: the error the run ends with says so, not this one
            self._out = None

    def close(self):
        if self._out is not None:
            self._out.close()
            self._out = None


class JSONLLogger(_Sink):
    """metrics.jsonl: one JSON object per record, flushed as it is written (a crash loses none)."""

    def on_fit_start(self, trainer):
        if trainer.main:
            self._out = open(trainer.folder.metrics, "a", encoding="utf-8")

    def on_log(self, trainer, record):
        if self._out is not None:
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()


class CSVLogger(_Sink):
    """metrics.csv: the same records, one row per figure (event, step, epoch, time, name, value), so a
    new metric never changes the columns; pandas' pivot_table(index="step", columns="name") widens it."""

    def on_fit_start(self, trainer):
        if trainer.main:
            path = trainer.folder.metrics_csv
            new = not path.exists() or path.stat().st_size == 0
            self._out = open(path, "a", encoding="utf-8", newline="")
            self._csv = csv.writer(self._out)
            if new:
                self._csv.writerow((*_HEAD, "name", "value"))

    def on_log(self, trainer, record):
        if self._out is None:
            return
        head = tuple(record[k] for k in _HEAD)
        self._csv.writerows((*head, k, "" if v is None else v) for k, v in record.items() if k not in _HEAD)
        self._out.flush()


class TensorBoardLogger(_Sink):
    """[trainer] tensorboard = true: every number of every record as a scalar, under RUN_DIR/tensorboard."""

    def on_fit_start(self, trainer):
        if not trainer.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("[trainer] tensorboard = true needs the tensorboard package: "
                              "pip install tensorboard (or pip install 'strata[tensorboard]')") from None
        self._out = SummaryWriter(str(trainer.folder.tensorboard))

    def on_log(self, trainer, record):
        if self._out is None:
            return
        event = record["event"]
        for k, v in record.items():
            if k not in _HEAD and isinstance(v, (int, float)):
                self._out.add_scalar(k if "/" in k else f"{event}/{k}", v, record["step"])


def builtin_callbacks(cfg, schedules) -> list[Callback]:
    """The callbacks a run config asks for, in the order they run."""
    t = cfg.trainer
    where = "[trainer] monitor"
    out: list[Callback] = []
    if any(s.per == "metric" for s in schedules.values()):
        out.append(ReduceOnPlateau(t.monitor, where))
    out.append(BestCheckpoint(t.monitor, t.mode, where))
    if t.early_stopping_patience:
        out.append(EarlyStopping(t.monitor, t.mode, t.early_stopping_patience, where))
    out += [JSONLLogger(), CSVLogger()]
    if t.tensorboard:
        out.append(TensorBoardLogger())
    return out
