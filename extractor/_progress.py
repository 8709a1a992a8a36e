"""Progress of long runs: a tqdm bar on a terminal, a plain log line every so many items
elsewhere (a log file or a CI console fills with ``\\r`` frames otherwise)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("featurebank.progress")


def progress(total: int, *, enabled: bool = True, desc: str = "", unit: str = "img",
             every: int | None = None) -> Any:
    """A progress object with ``update(n)``, ``set_postfix(**counts)`` and ``close()``.

    A tqdm bar when stderr is a terminal; otherwise :class:`ProgressLines`, which logs one line
    per ``every`` items (default: about 20 lines a run, at least 100 items apart) and one at
    the end. ``enabled=False``: nothing at all.
    """
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, smoothing=0.1)
    every = every or max(100, total // 20)
    return ProgressLines(total, desc, unit, every, enabled)


class ProgressLines:
    """Progress as log lines: ``embedding: 400/1000 img (33.1 img/s) cached=0 failed=1``."""

    def __init__(self, total: int, desc: str, unit: str, every: int, enabled: bool = True):
        self.total, self.desc, self.unit, self.every, self.enabled = total, desc, unit, every, enabled
        self.n = 0
        self._next = every
        self._postfix: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next and self.n < self.total:
            self._next = (self.n // self.every + 1) * self.every
            self._line()

    def set_postfix(self, refresh: bool = False, **counts: Any) -> None:
        self._postfix = counts

    def close(self) -> None:
        if not self._closed and self.n:
            self._line()
        self._closed = True

    def _line(self) -> None:
        if not self.enabled:
            return
        seconds = time.perf_counter() - self._started
        rate = f" ({self.n / seconds:.1f} {self.unit}/s)" if seconds > 0 else ""
        extra = "".join(f" {k}={v}" for k, v in self._postfix.items())
        log.info("%s: %d/%d %s%s%s", self.desc, self.n, self.total, self.unit, rate, extra)
