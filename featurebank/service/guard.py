"""ASGI middleware in front of every route: API key, declared body size, metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so request bodies stream through untouched and a client
that hangs up never leaves a task behind. Checks that need only the headers answer before the
application reads a byte of the body.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match

from featurebank.service.metrics import ServiceMetrics

# "/docs" covers the page's assets under /docs/assets too
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json", "/redoc")
UNMATCHED = "unmatched"


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def presented_key(scope) -> bytes | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


def route_label(scope, routes: Sequence[BaseRoute]) -> str:
    """The metrics label of a request: the path template of the route it is for, also when the
    guard refuses it before routing (401, 413) or the method is wrong (405); ``unmatched`` only
    for paths nothing serves, so label values stay few whatever clients send."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", None) or UNMATCHED
    return UNMATCHED


class GuardMiddleware:
    """Refuse unauthenticated and oversized requests early; count and time every answer."""

    def __init__(self, app, metrics: ServiceMetrics, api_key: str | None, max_request_bytes: int,
                 routes: Sequence[BaseRoute] = ()):
        self.app = app
        self.routes = routes
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.max_request_bytes = max_request_bytes

    def _refusal(self, scope) -> tuple[int, str, dict[str, str]] | None:
        path = scope.get("path", "")
        if self.api_key is not None and not path.startswith(OPEN_PATHS):
            key = presented_key(scope)
            # compare_digest: the time taken does not tell an attacker how much of a guess matched
            if key is None or not hmac.compare_digest(key, self.api_key):
                return (401, "missing or wrong API key; send 'Authorization: Bearer KEY' "
                             "(the key is in FEATUREBANK_API_KEY where the service runs)",
                        {"www-authenticate": "Bearer"})
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            return (413, f"request body of {int(declared)} bytes is over the limit of "
                         f"{self.max_request_bytes} bytes; send fewer or smaller images", {})
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        name = route_label(scope, self.routes)
        status = 500  # what the client sees if the application dies before answering

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                await self.app(scope, receive, send_counted)
            else:
                code, detail, headers = refusal
                body = json.dumps({"detail": detail}).encode()
                await send_counted({"type": "http.response.start", "status": code, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
