"""Abuse of the HTTP service, shared by tests/reliability/test_service.py and
``benchmarks/reliability.py``: fuzzed requests in-process, then a real uvicorn server (with a
trained classifier loaded and a small queue) fuzzed from its own schema, overloaded, sent
malformed bodies, slow bodies and clients that hang up. Every answer's status is kept, with the
status the scenario expects, so a regression of shedding or of an error code shows.

Self-contained (imports nothing from ``tests``), so it can move as a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness.serving import ProcessOutput, wait_ready

Route = tuple[str, str, str]  # (path, "multipart" | "raw", field or content type)
# A small queue: 16 concurrent one-image requests cannot all be admitted, so overload sheds.
ABUSE_CONFIG = {"max_batch_size": 2, "max_wait_ms": 2.0, "max_queue_images": 4,
                "max_request_bytes": 1_000_000, "max_images_per_request": 4,
                "request_timeout_s": 60.0, "retry_after_s": 3}
CLOSED = "closed"  # the server closed the connection without a status line


def image_bytes(name: str = "coffee", size=(200, 150), quality: int = 90) -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize(size).save(buf, "JPEG",
                                                                            quality=quality)
    return buf.getvalue()


def train_classifier(onnx_path: Path, out: Path) -> Path:
    """A small real classifier (head features of photo crops, labelled by photo) for
    ``/v1/predictions``, saved as ``featurebank train`` saves one."""
    from sklearn.linear_model import LogisticRegression

    from featurebank.classical import TrainedClassifier
    from featurebank.extractor import Extractor

    ex = Extractor(str(onnx_path), layers=["head"])
    names = ("coffee", "chelsea", "rocket")
    images, labels = [], []
    for name in names:
        for size in ((160, 120), (224, 224), (300, 200), (120, 180)):
            images.append(image_bytes(name, size))
            labels.append(name)
    X = ex.embed(images)["head"]
    model = TrainedClassifier(LogisticRegression(max_iter=2000).fit(X, labels), ex.specs, list(names),
                         info={"onnx_path": str(onnx_path)})
    return model.save(out)


def app_kwargs(create_app, onnx_path: Path, tmp: Path, classifier: Path | None = None,
               config: dict | None = None) -> dict:
    """JSON-able arguments of ``create_app`` (``config`` as a dict): the model, or the
    classifier (which then decides the features), and a fresh store."""
    kw: dict = {"store": str(tmp / "service.h5")}
    if classifier is not None:
        kw["classifier"] = str(classifier)
    else:
        kw["features"] = str(onnx_path)
    if config:
        kw["config"] = dict(config)
    return kw


def make_app(kw: dict):
    from featurebank.service import ServiceConfig, create_app

    kw = dict(kw)
    config = kw.pop("config", None)
    return create_app(**kw, config=ServiceConfig(**config) if config else None)


def upload_routes(app) -> list[Route]:
    """POST operations of the app's schema taking multipart files or a raw image body."""
    schema = app.openapi()
    routes = []
    for path, ops in schema.get("paths", {}).items():
        body = ops.get("post", {}).get("requestBody", {}).get("content", {})
        for ctype, spec in body.items():
            if ctype == "multipart/form-data":
                props = spec.get("schema", {}).get("properties", {})
                routes += [(path, "multipart", f) for f, fs in props.items()
                           if "binary" in json.dumps(fs) or "contentMediaType" in json.dumps(fs)][:1]
            elif ctype.startswith("image/"):
                routes.append((path, "raw", "image/jpeg"))
    return routes


def request_args(kind: str, field: str, payload: bytes) -> dict:
    if kind == "multipart":
        return {"files": {field: ("x.jpg", payload, "image/jpeg")}}
    return {"content": payload, "headers": {"content-type": field}}


def served_routes(app) -> list[Route]:
    """Upload routes that answer a good image with 200 (every one, with a classifier)."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        codes = {r: client.post(r[0], **request_args(r[1], r[2], image_bytes())).status_code
                 for r in upload_routes(app)}
    return [r for r, code in codes.items() if code == 200]


def fuzz_requests(app, routes: list[Route], examples: int = 60) -> dict:
    """Hypothesis-made requests in-process: truncated and random images, multipart without a
    boundary or cut mid-part, empty bodies. Counts by status; ``server_errors`` lists any 5xx."""
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
                body = b"--XYZ\r\nContent-Disposition: form-data; name=\"files\"; " \
                       b"filename=\"a.jpg\"\r\n\r\n" + good[:cut]
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
    """``make_app(kw)`` under uvicorn in a child process on a loopback port of its choosing
    (port 0, read back from its log: no race for the port); raises
    :class:`~benchmarks.harness.serving.ServerDidNotStart` with its output if it does not start."""
    code = ("import json, sys, uvicorn\nfrom featurebank.service import ServiceConfig, create_app\n"
            "kw = json.loads(sys.argv[1]); cfg = kw.pop('config', None)\n"
            "app = create_app(**kw, config=ServiceConfig(**cfg) if cfg else None)\n"
            "uvicorn.run(app, host='127.0.0.1', port=0, log_level='info', access_log=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kw)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = ProcessOutput(proc.stderr)
    base = wait_ready(proc, out, ready_s=120)
    try:
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fuzz_server(base: str, examples: int = 25) -> dict:
    """schemathesis against the running server, every operation of its schema: no 5xx, and
    each answer's status, media type and body as the schema documents them."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    statuses: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    conformance = [checks.not_a_server_error, checks.status_code_conformance,
                   checks.content_type_conformance, checks.response_schema_conformance]
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            r = case.call(timeout=60)
            name = f"{case.operation.method.upper()} {case.operation.path}"
            per = statuses.setdefault(name, {})
            per[r.status_code] = per.get(r.status_code, 0) + 1
            try:
                case.validate_response(r, checks=conformance)
            except Exception as exc:  # noqa: BLE001 - every kind of failure is reported
                failures.append(f"{name} -> {r.status_code}: "
                                f"{str(exc).splitlines()[0][:200]}")

        call()
    return {"statuses": statuses, "failures": failures}


def raw_request(port: int, head: bytes, body: bytes = b"", *, piece: int = 0, pause: float = 0.0,
                hang_up: str | None = None) -> str:
    """Send a request by hand and return its status code as text, ``closed`` when the server
    closed without one, or ``left`` when this client hung up without reading.

    ``piece``/``pause``: send the body in pieces with a pause between them (a slow client).
    ``hang_up``: ``"half"`` stops sending (FIN) and reads; ``"full"`` closes at once.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(head)
            step = piece or max(len(body), 1)
            for i in range(0, len(body), step):
                s.sendall(body[i:i + step])
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the server answered early (413) and closed: read what it said
        if hang_up == "full":
            return "left"
        if hang_up == "half":
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass  # reset by the server
    line = data.split(b"\r\n", 1)[0].split()
    return line[1].decode() if len(line) >= 2 and line[0].startswith(b"HTTP/") else CLOSED


def _head(path: str, ctype: str, length: int | str | None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Type: {ctype}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def scenarios(path: str, good: bytes, limit: int) -> list[tuple[str, set[str], dict]]:
    """(name, statuses accepted, raw_request arguments) for malformed, slow and hung-up
    requests against the upload route ``path``. Bodies are seeded: the same every run."""
    rng = random.Random(7)
    junk = bytes(rng.randrange(256) for _ in range(5000))
    b = "B0UND"
    part = (f"--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    whole = part + good + f"\r\n--{b}--\r\n".encode()
    mp = f"multipart/form-data; boundary={b}"
    big = part + bytes(rng.randrange(256) for _ in range(limit))
    chunk = f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    many = b"".join(part + good + b"\r\n" for _ in range(5)) + f"--{b}--\r\n".encode()
    return [
        # malformed
        ("multipart, garbage body", {"400"}, {"head": _head(path, mp, len(junk)), "body": junk}),
        ("multipart without boundary", {"400"},
         {"head": _head(path, "multipart/form-data", len(whole)), "body": whole}),
        ("truncated image, raw", {"422"},
         {"head": _head(path, "image/jpeg", 600), "body": good[:600]}),
        ("empty raw body", {"422"}, {"head": _head(path, "image/jpeg", 0)}),
        ("text/plain body", {"415"}, {"head": _head(path, "text/plain", 5), "body": b"hello"}),
        ("Content-Length not a number", {"400"}, {"head": _head(path, "image/jpeg", "12ab")}),
        ("declared over the limit", {"413"}, {"head": _head(path, mp, limit + 1)}),
        ("chunked over the limit", {"413"},
         {"head": _head(path, mp, None, "Transfer-Encoding: chunked\r\n"), "body": chunk}),
        ("five images, four allowed", {"413"}, {"head": _head(path, mp, len(many)), "body": many}),
        # slow: complete bodies are served, however slowly they come
        ("slow complete multipart", {"200"},
         {"head": _head(path, mp, len(whole)), "body": whole, "piece": 1024, "pause": 0.01}),
        ("slow, then stops sending", {"400", CLOSED},
         {"head": _head(path, mp, len(whole) + 50_000), "body": whole, "piece": 2048,
          "pause": 0.01, "hang_up": "half"}),
        # hung up mid-upload: the server may answer 400 to nobody or just close
        ("hangs up mid-body (FIN)", {"400", CLOSED},
         {"head": _head(path, mp, 400_000), "body": big[:100_000], "hang_up": "half"}),
        ("hangs up mid-body (close)", {"left"},
         {"head": _head(path, mp, 400_000), "body": big[:100_000], "hang_up": "full"}),
    ]


def _overload(base: str, route: Route, good: bytes, n: int, concurrency: int) -> list:
    import httpx

    path, kind, field = route

    def one(_):
        r = httpx.post(base + path, timeout=120, **request_args(kind, field, good))
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def server_counts(base: str) -> dict[tuple[str, str], float]:
    """``featurebank_requests_total`` by (route, status), as the server counted them."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=30).text
    return {(s.labels["route"], s.labels["status"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "featurebank_requests_total"}


def abuse(proc: subprocess.Popen, base: str, route: Route, rounds: int = 1,
          concurrency: int = 16) -> dict:
    """Overload, malformed, slow and hung-up requests against a running server (started with
    :data:`ABUSE_CONFIG`), ``rounds`` times. Returns every status seen with what was expected
    (``unexpected`` lists the misses), the answer to the next request, the server's own
    counts, and its RSS against the warm baseline."""
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
    overload: dict[str, int] = {}
    retry_after: set[str | None] = set()
    seen: dict[str, dict[str, int]] = {}
    unexpected: list[str] = []
    after_overload = []
    for _ in range(rounds):
        for status, retry in _overload(base, route, good, n=3 * concurrency,
                                       concurrency=concurrency):
            overload[str(status)] = overload.get(str(status), 0) + 1
            if status == 503:
                retry_after.add(retry)
        after_overload.append(ok_request())
        cases = scenarios(path, good, ABUSE_CONFIG["max_request_bytes"])
        with ThreadPoolExecutor(4) as pool:  # several at once, as clients would
            got = list(pool.map(lambda c: raw_request(port, **c[2]), cases))
        for (name, expected, _), status in zip(cases, got, strict=True):
            per = seen.setdefault(name, {})
            per[status] = per.get(status, 0) + 1
            if status not in expected:
                unexpected.append(f"{name}: got {status}, expected {sorted(expected)}")
    alive = proc.poll() is None
    after = ok_request() if alive else None
    counts = server_counts(base) if alive else {}
    time.sleep(1.0)
    grown = (rss.memory_info().rss - baseline) / 2**20 if alive else None
    return {"rounds": rounds, "overload_statuses": overload, "retry_after": sorted(map(str, retry_after)),
            "after_overload": after_overload, "scenarios": seen, "unexpected": unexpected,
            "server_alive": alive, "request_after": after,
            "server_5xx": {f"{r} {s}": v for (r, s), v in counts.items()
                           if s.startswith("5") and s != "503"},
            "rss_baseline_mb": round(baseline / 2**20),
            "rss_growth_mb": None if grown is None else round(grown, 1)}
