"""``featurebank serve`` as a real subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


@contextlib.contextmanager
def served(*args: str, ready_s: float = 120.0) -> Iterator[str]:
    """Run ``featurebank serve ARGS`` until the block ends; yields its base URL once ready.

    On exit the server gets SIGTERM and must stop cleanly: uvicorn shuts down gracefully and
    re-raises SIGTERM, so the status is 0 or -SIGTERM, and no traceback is printed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "featurebank", "serve", *map(str, args),
                             "--port", str(port), "--log-level", "warning"],
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_s
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert b"Traceback" not in proc.stderr.read()
