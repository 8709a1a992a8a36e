"""The HTTP service under bad requests: fuzzed bodies in-process, then abuse of a real server.

The scenarios live in ``tests/reliability/service_abuse.py`` (shared with
``benchmarks/reliability.py``, which runs them for more rounds and reports the figures).
"""

from __future__ import annotations

import pytest

service = pytest.importorskip("featurebank.service", reason="the service extra is not installed")
pytest.importorskip("httpx")
pytest.importorskip("psutil")

from tests.reliability.service_abuse import (  # noqa: E402
    abuse,
    app_kwargs,
    fuzz_requests,
    running_server,
    served_routes,
)


@pytest.fixture(scope="module")
def app_and_routes(lite0_onnx, tmp_path_factory):
    kw = app_kwargs(service.create_app, lite0_onnx, tmp_path_factory.mktemp("service"))
    app = service.create_app(**kw)
    routes = served_routes(app)
    assert routes, "no upload route in the service's OpenAPI schema answers a good image"
    return app, routes, kw


def test_fuzz_requests_never_5xx(app_and_routes):
    app, routes, _ = app_and_routes
    found = fuzz_requests(app, routes, examples=60)
    assert found["examples"] == 60
    assert not found["server_errors"], found["server_errors"][:5]
    assert set(found["statuses"]) <= {200, 400, 413, 415, 422}, found["statuses"]


def test_real_server_survives_abuse_and_memory_returns(app_and_routes):
    _, routes, kw = app_and_routes
    with running_server(kw) as (proc, base):
        found = abuse(proc, base, routes[0], rounds=1)
    assert found["server_alive"], "the server died"
    assert found["request_after"] == 200
    assert set(found["overload_statuses"]) <= {200, 429, 503}, found["overload_statuses"]
    assert found["rss_growth_mb"] < 100, f"RSS grew by {found['rss_growth_mb']} MiB over the warm baseline"
