"""Progress: a live bar (rich) on a terminal; on a pipe or log file, one line per epoch and at most one
line every `log_every_s` seconds (never a line per step). Loss values are read from the device only
when something is about to be shown, so the display costs no per-step synchronisation."""

from __future__ import annotations

import sys
import time
from typing import Callable


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel, where rich draws the bar as a live notebook output."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class Progress:
    def __init__(self, mode: str = "auto", log_every_s: float = 30.0, enabled: bool = True, stream=None,
                 force_terminal: bool | None = None):
        self.stream = stream or sys.stdout
        tty = force_terminal if force_terminal is not None else \
            getattr(self.stream, "isatty", lambda: False)() or (self.stream is sys.stdout and in_notebook())
        if mode == "auto":
            mode = "bar" if tty else "lines"
        self.mode = mode if enabled else "off"
        self.live = self.mode != "off"  # whether the loop calls update() at all
        self.log_every_s = log_every_s
        self._force_terminal = force_terminal
        self._bar = None  # (rich Progress, task id) while an epoch is drawn
        self._last_line = time.perf_counter()
        self._next_refresh = 0.0
        self._epoch_start = time.perf_counter()

    def start_epoch(self, epoch: int, total: int) -> None:
        self._epoch_start = time.perf_counter()
        if self.mode != "bar":
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("step {task.fields[step]} {task.fields[values]} {task.fields[rate]}"),
                  TextColumn("ETA"), TimeRemainingColumn(), auto_refresh=False,
                  console=Console(file=self.stream, force_terminal=self._force_terminal))
        task = bar.add_task("train", total=total, epoch=epoch, step="", values="", rate="")
        bar.start()
        self._bar = (bar, task)

    # The trainer calls this every step; everything below is cheap unless a refresh is due.
    def update(self, epoch: int, batch: int, total: int, step: int, values: Callable[[], dict], samples: int) -> None:
        if self.mode == "off":
            return
        now = time.perf_counter()
        if self.mode == "bar":
            if now < self._next_refresh or self._bar is None:
                return
            self._next_refresh = now + 0.25
            bar, task = self._bar
            rate = samples / max(1e-9, now - self._epoch_start)
            bar.update(task, completed=batch, step=step, values=_kv(values()), rate=f"{rate:,.0f}/s")
            bar.refresh()
        elif now - self._last_line >= self.log_every_s:
            self._last_line = now
            rate = samples / max(1e-9, now - self._epoch_start)
            self.write(f"epoch {epoch} step {step} [{batch}/{total}] " + _kv(values()) + f" | {rate:,.0f} samples/s")

    def _close_bar(self) -> None:
        if self._bar is not None:
            bar, task = self._bar
            bar.update(task, completed=bar.tasks[0].total)
            bar.refresh()
            bar.stop()
            self._bar = None

    def end_epoch(self, epoch: int, metrics: dict, seconds: float) -> None:
        if self.mode == "off":
            return
        self._close_bar()
        self._last_line = time.perf_counter()
        self.write(f"epoch {epoch} done in {seconds:.1f}s: " + _kv(metrics))

    def write(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar[0].console.print(text, markup=False, highlight=False)
            return
        self.stream.write(text + "\n")
        self.stream.flush()


def _kv(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, int):
            parts.append(f"{k} {v}")
    return " ".join(parts)
