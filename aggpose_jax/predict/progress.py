"""A one-line progress bar on stderr: done/total, frames per second, ETA (redrawn in place on a terminal,
a line every few seconds otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one input. ``total`` may be None (unknown) or an estimate (a container's frame count)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "frames",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 5.0)
        self.done = 0
        self.start = time.perf_counter()
        self._last = -1e9
        self._width = 0

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        if self.total:
            total = max(self.total, self.done)
            filled = int(20 * self.done / total)
            bar = "#" * filled + "." * (20 - filled)
            eta = _clock((total - self.done) / rate) if rate > 0 else "?"
            return f"{self.label} [{bar}] {self.done}/{total} {self.unit}, {rate:.1f} {self.unit}/s, ETA {eta}"
        return f"{self.label} {self.done} {self.unit}, {rate:.1f} {self.unit}/s"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval_s:
            self._last = now
            self._show()

    def _show(self, end: str = "") -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + end)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Final line: done, elapsed time and the mean rate."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        text = f"{self.label} {self.done} {self.unit} in {_clock(elapsed)} ({self.rate:.1f} {self.unit}/s)"
        if self.tty:
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)) + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


__all__ = ["Progress"]
