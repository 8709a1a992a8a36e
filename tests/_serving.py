"""``featurebank serve`` as a real subprocess on a loopback port, for end-to-end tests.

The server picks its own port (``--port 0``) and the helper reads the bound address from its
"Uvicorn running on ..." log line, so no other process can take the port in between. The helper
waits on the server's output and on ``/readyz``, and raises with the server's output when the
server exits or never becomes ready.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx

_RUNNING = re.compile(r"running on (https?://\S+)")


class ServerDidNotStart(RuntimeError):
    """``featurebank serve`` exited, or did not answer ``/readyz``, in time."""


class _Output:
    """Collects a process's stderr lines on a thread; waits for a line matching a pattern."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
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
        self._thread.join(timeout=30)
        return "".join(self.lines)


def _not_started(proc: subprocess.Popen, out: _Output, why: str) -> ServerDidNotStart:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    return ServerDidNotStart(f"featurebank serve {why} (exit status {proc.returncode}); its "
                             f"output:\n{out.text()[-4000:]}")


def _ready(proc: subprocess.Popen, out: _Output, ready_s: float) -> str:
    """The base URL once ``/readyz`` answers 200; raises :class:`ServerDidNotStart` otherwise."""
    deadline = time.monotonic() + ready_s
    m = out.wait_for(_RUNNING, ready_s)
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


@contextlib.contextmanager
def served(*args: str, ready_s: float = 120.0) -> Iterator[str]:
    """Run ``featurebank serve ARGS`` until the block ends; yields its base URL once ready.

    Raises :class:`ServerDidNotStart` (with the server's output) when the server exits or is
    not ready within ``ready_s`` seconds. On exit the server gets SIGTERM and must stop
    cleanly: uvicorn shuts down gracefully and re-raises SIGTERM, so the status is 0 or
    -SIGTERM, and no traceback is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "featurebank", "serve", *map(str, args),
                             "--port", "0", "--log-level", "info"],
                            stderr=subprocess.PIPE, text=True)
    out = _Output(proc.stderr)
    base = _ready(proc, out, ready_s)
    try:
        yield base
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), out.text()[-2000:]
        assert "Traceback" not in out.text()
