"""``featurebank serve`` as a real subprocess on a loopback port, for end-to-end tests.

The server picks its own port (``--port 0``) and the bound address is read from its log
(``benchmarks/harness/serving.py``), so no other process can take the port in between; a
server that exits or never becomes ready raises with its own output.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator

from benchmarks.harness.serving import ProcessOutput, ServerDidNotStart, wait_ready

__all__ = ["ServerDidNotStart", "served"]


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
    out = ProcessOutput(proc.stderr)
    base = wait_ready(proc, out, ready_s)
    try:
        yield base
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), out.text()[-2000:]
        assert "Traceback" not in out.text()
