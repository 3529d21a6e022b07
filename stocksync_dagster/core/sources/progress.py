"""Progress lines for long fetches: `done/total, rate/s, ETA`, every N items or ~10 s."""

from __future__ import annotations

import logging
import threading
import time


class Progress:
    """Counts finished items (thread-safe) and logs at INFO every `every` items or `seconds`.

    Dagster captures the `stocksync_dagster` loggers into run logs (dagster.yaml `python_logs`),
    so a long range fetch shows where it is in the UI.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int,
        unit: str = "stocks",
        every: int | None = None,
        seconds: float = 10.0,
    ) -> None:
        self.logger = logger
        self.what = what
        self.total = total
        self.unit = unit
        self.every = every or max(total // 10, 1)
        self.seconds = seconds
        self.done = 0
        self._started = self._last_time = time.monotonic()
        self._last_done = 0
        self._lock = threading.Lock()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            due = self.done - self._last_done >= self.every or now - self._last_time >= self.seconds
            if not due or self.done >= self.total:
                return
            self._last_done, self._last_time = self.done, now
            line = self.line(now)
        self.logger.info(line)

    def line(self, now: float | None = None) -> str:
        """`what: done/total unit (pct), rate/s, ETA`."""
        elapsed = (now or time.monotonic()) - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = self.done / self.total if self.total else 1.0
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({share:.0%}), "
            f"{rate:.1f} {self.unit}/s, ETA {_duration(left)}"
        )


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: no rate yet
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
