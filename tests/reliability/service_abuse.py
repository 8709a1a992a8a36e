"""Abuse of the HTTP service, shared by tests/reliability/test_service.py and
``benchmarks/reliability.py``: fuzzed request bodies in-process, then a real uvicorn server
under overload, clients hanging up mid-upload, slow clients and malformed multipart bodies.

The upload routes are found from the app's OpenAPI schema (POST operations taking multipart
files or a raw body), so the checks follow the service as it grows.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.reliability.faults import subprocess_env

Route = tuple[str, str, str]  # (path, "multipart" | "raw", field or content type)


def app_kwargs(create_app, onnx_path: Path, tmp: Path) -> dict:
    """Arguments for create_app from its signature: the test model, a fresh store."""
    kw = {}
    for name, p in inspect.signature(create_app).parameters.items():
        if name in ("model", "model_path", "onnx", "onnx_path"):
            kw[name] = str(onnx_path)
        elif name in ("store", "store_path"):
            kw[name] = str(tmp / "service.h5")
        elif p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            raise LookupError(f"create_app needs {name!r}; the suite does not know how to provide it")
    return kw


def upload_routes(app) -> list[Route]:
    """POST operations with a multipart file field or a raw image body."""
    schema = app.openapi()
    routes = []
    for path, ops in schema.get("paths", {}).items():
        body = ops.get("post", {}).get("requestBody", {}).get("content", {})
        if "{" in path:
            continue
        for ctype, spec in body.items():
            if ctype == "multipart/form-data":
                ref = spec.get("schema", {}).get("$ref", "")
                props = (schema["components"]["schemas"][ref.split("/")[-1]]["properties"]
                         if ref else spec.get("schema", {}).get("properties", {}))
                for field, fs in props.items():
                    text = json.dumps(fs)  # OpenAPI 3.0 says "binary", 3.1 "contentMediaType"
                    if "binary" in text or "contentMediaType" in text:
                        routes.append((path, "multipart", field))
                        break
            elif ctype in ("application/octet-stream",) or ctype.startswith("image/"):
                routes.append((path, "raw", ctype))
    return routes


def image_bytes() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).resize((200, 150)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def request_args(kind: str, field: str, payload: bytes) -> dict:
    if kind == "multipart":
        return {"files": {field: ("x.jpg", payload, "image/jpeg")}}
    return {"content": payload, "headers": {"content-type": field}}


def served_routes(app) -> list[Route]:
    """Upload routes that answer a good image with 200 (409: not configured here, e.g.
    predictions without a classifier)."""
    from fastapi.testclient import TestClient

    served = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, kind, field in upload_routes(app):
            r = client.post(path, **request_args(kind, field, image_bytes()))
            assert r.status_code in (200, 409), (path, r.status_code, r.text[:300])
            if r.status_code == 200:
                served.append((path, kind, field))
    return served


def fuzz_requests(app, routes: list[Route], examples: int = 60) -> dict:
    """Hypothesis-made requests: truncated and random images, multipart without a boundary or
    cut mid-part, empty bodies. Returns counts by status; ``server_errors`` lists any 5xx."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = image_bytes()
    statuses: dict[int, int] = {}
    server_errors: list = []
    with TestClient(app, raise_server_exceptions=False) as client:
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(routes), st.integers(0, 4), st.binary(max_size=2000),
               st.integers(0, len(good)))
        def run(route, shape, junk, cut):
            path, kind, field = route
            if shape == 0:  # a truncated image in a well-formed request
                r = client.post(path, **request_args(kind, field, good[:cut]))
            elif shape == 1:  # random bytes as the image
                r = client.post(path, **request_args(kind, field, junk))
            elif shape == 2:  # multipart header without a boundary
                r = client.post(path, content=junk, headers={"content-type": "multipart/form-data"})
            elif shape == 3:  # a boundary that never appears, or a body cut mid-part
                body = b"--XYZ\r\nContent-Disposition: form-data; name=\"" + field.encode() + \
                    b"\"; filename=\"a.jpg\"\r\n\r\n" + good[:cut]
                r = client.post(path, content=body,
                                headers={"content-type": "multipart/form-data; boundary=XYZ"})
            else:  # no body at all
                r = client.post(path)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                server_errors.append((path, shape, r.status_code, r.text[:200]))

        run()
    return {"examples": sum(statuses.values()), "statuses": statuses, "server_errors": server_errors}


@contextlib.contextmanager
def running_server(kw: dict):
    """``create_app(**kw)`` under uvicorn in a child process on a free loopback port."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import json, sys, uvicorn\nfrom featurebank.service import create_app\n"
            "uvicorn.run(create_app(**json.loads(sys.argv[1])), host='127.0.0.1', "
            "port=int(sys.argv[2]), log_level='warning')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kw), str(port)],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.3)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw(port: int, head: bytes, body: bytes, pause: float = 0.0, close_early: bool = False) -> None:
    """Send a request by hand: slowly (``pause`` between pieces) or hanging up mid-body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for i in range(0, len(body), 4096):
            s.sendall(body[i:i + 4096])
            if pause:
                time.sleep(pause)
        if close_early:
            return  # hang up without reading: the server must drop the request
        with contextlib.suppress(OSError):
            s.recv(1024)


def abuse(proc: subprocess.Popen, base: str, route: Route, rounds: int = 1) -> dict:
    """Overload, hang-ups mid-upload, slow clients and malformed multipart against a running
    server, ``rounds`` times. Returns what was sent, the statuses of the overload requests,
    whether the server stayed up and answers, and its RSS against the warm baseline."""
    import httpx
    import psutil

    path, kind, field = route
    port = int(base.rsplit(":", 1)[1])
    good = image_bytes()
    rss = psutil.Process(proc.pid)

    def ok_request() -> int:
        return httpx.post(base + path, timeout=120, **request_args(kind, field, good)).status_code

    for _ in range(5):  # warm up: sessions, arenas
        assert ok_request() == 200
    baseline = rss.memory_info().rss

    boundary = b"B0UND"
    part_head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + field.encode()
                 + b"\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
    big = part_head + os.urandom(2_000_000)

    def head(length: int) -> bytes:
        ctype = (b"multipart/form-data; boundary=" + boundary) if kind == "multipart" else field.encode()
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n".encode()
                + b"Content-Type: " + ctype + b"\r\n\r\n")

    statuses: dict[int, int] = {}
    sent = {"overload_requests": 0, "hang_ups": 0, "slow_clients": 0, "malformed": 0}
    for _ in range(rounds):
        with ThreadPoolExecutor(16) as pool:  # overload: 48 requests, 16 at a time
            for s in pool.map(lambda _: ok_request(), range(48)):
                statuses[s] = statuses.get(s, 0) + 1
        sent["overload_requests"] += 48
        threads = []
        for _ in range(12):  # clients hanging up mid-upload of a declared 4 MB body
            threads.append(threading.Thread(target=_raw, args=(port, head(4_000_000), big[:300_000]),
                                            kwargs={"close_early": True}))
        for _ in range(4):  # slow clients: 40 KB at 4 KB per 0.05 s, then gone
            threads.append(threading.Thread(target=_raw, args=(port, head(len(big)), big[:40_000]),
                                            kwargs={"pause": 0.05, "close_early": True}))
        for _ in range(8):  # malformed multipart: garbage after the header, wrong boundary
            threads.append(threading.Thread(target=_raw, args=(port, head(5000), os.urandom(5000))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        sent["hang_ups"] += 12
        sent["slow_clients"] += 4
        sent["malformed"] += 8
    alive = proc.poll() is None
    after = ok_request() if alive else None
    time.sleep(1.0)
    grown = (rss.memory_info().rss - baseline) / 2**20 if alive else None
    return {**sent, "rounds": rounds, "overload_statuses": statuses, "server_alive": alive,
            "request_after": after, "rss_baseline_mb": round(baseline / 2**20),
            "rss_growth_mb": None if grown is None else round(grown, 1)}
