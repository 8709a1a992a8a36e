"""A server in a child process, started without races: it binds a port of its own choosing
(port 0) and the address is read from its "Uvicorn running on ..." log line; readiness is
``/readyz`` answering 200. A server that exits, or is not ready in time, raises
:class:`ServerDidNotStart` with its own output instead of handing back an address nothing
listens on. Shared by ``tests/_serving.py`` and ``service_abuse``.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from typing import IO

RUNNING = re.compile(r"running on (https?://\S+)")


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer ``/readyz``, in time."""


class ProcessOutput:
    """Collects a child's output lines on a thread (so its pipe never fills) and waits for a
    line matching a pattern."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        """The first line matching ``pattern``; None when the stream ends or time runs out."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if m := pattern.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return None
                self._changed.wait(left)

    def text(self) -> str:
        """Everything so far; all of it once the child has exited."""
        self._thread.join(timeout=30)
        with self._changed:
            return "".join(self.lines)


def _not_started(proc: subprocess.Popen, out: ProcessOutput, why: str) -> ServerDidNotStart:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    return ServerDidNotStart(f"the server {why} (exit status {proc.returncode}); its output:\n"
                             f"{out.text()[-4000:]}")


def wait_ready(proc: subprocess.Popen, out: ProcessOutput, ready_s: float = 120.0) -> str:
    """The server's base URL once ``/readyz`` answers 200; raises :class:`ServerDidNotStart`.

    ``out`` collects the child's stderr, where uvicorn logs its address (log level info)."""
    import httpx

    deadline = time.monotonic() + ready_s
    m = out.wait_for(RUNNING, ready_s)
    if m is None:
        raise _not_started(proc, out, "never started listening")
    base = m.group(1)
    # uvicorn logs that line after the app's start-up (the model loaded and warmed), so
    # /readyz normally answers 200 at the first try; a pause between tries is no assertion
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return base
        time.sleep(0.05)
    raise _not_started(proc, out, "never became ready")
