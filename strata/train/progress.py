"""Progress: a live bar on a terminal; on a pipe or log file, one line per epoch and at most one
line every `log_every_s` seconds (never a line per step). Loss values are read from the device only
when something is about to be shown, so the display costs no per-step synchronisation."""

from __future__ import annotations

import sys
import time
from typing import Callable


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, mode: str = "auto", log_every_s: float = 30.0, enabled: bool = True, stream=None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode if enabled else "off"
        self.log_every_s = log_every_s
        self._bar = None
        self._last_line = time.perf_counter()
        self._next_refresh = 0.0

    # The trainer calls this every step; everything below is cheap unless a refresh is due.
    def update(self, epoch: int, batch: int, total: int, step: int, values: Callable[[], dict], samples: int) -> None:
        if self.mode == "off":
            return
        now = time.perf_counter()
        if self.mode == "bar":
            if now < self._next_refresh and batch < total:
                return
            self._next_refresh = now + 0.25
            self._draw_bar(epoch, batch, total, step, values(), samples, now)
        elif now - self._last_line >= self.log_every_s:
            self._last_line = now
            v = values()
            rate = samples / max(1e-9, now - self._epoch_start)
            self.write(f"epoch {epoch} step {step} [{batch}/{total}] " + _kv(v) + f" | {rate:,.0f} samples/s")

    def start_epoch(self, epoch: int, total: int) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch, self._total = epoch, total

    def _draw_bar(self, epoch, batch, total, step, v, samples, now):
        elapsed = now - self._epoch_start
        frac = batch / max(1, total)
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        width = 24
        fill = int(width * frac)
        rate = samples / max(1e-9, elapsed)
        line = (f"\repoch {epoch} |{'#' * fill}{'.' * (width - fill)}| {batch}/{total} step {step} "
                f"{_kv(v)} {rate:,.0f}/s ETA {_fmt_time(eta)}")
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()
        self._bar = True

    def end_epoch(self, epoch: int, metrics: dict, seconds: float) -> None:
        if self.mode == "off":
            return
        if self._bar:
            self.stream.write("\n")
            self._bar = None
        self._last_line = time.perf_counter()
        self.write(f"epoch {epoch} done in {seconds:.1f}s: " + _kv(metrics))

    def write(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._bar:
            self.stream.write("\n")
            self._bar = None
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
