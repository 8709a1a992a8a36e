"""The HTTP service under bad requests: fuzzed bodies in-process, then a real uvicorn server
with a trained classifier and a small queue: fuzzed from its own schema, overloaded until it
sheds, sent malformed, slow and hung-up requests, each answer's status checked.

The scenarios live in ``benchmarks/harness/service_abuse.py`` (shared with
``benchmarks/reliability.py``, which runs them for more rounds and reports the figures).
"""

from __future__ import annotations

import pytest

service = pytest.importorskip("featurebank.service", reason="the service extra is not installed")
pytest.importorskip("httpx")
pytest.importorskip("psutil")

from benchmarks.harness import service_abuse as sa  # noqa: E402


@pytest.fixture(scope="module")
def app_and_routes(lite0_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    classifier = sa.train_classifier(lite0_onnx, tmp / "photos.joblib")
    kw = sa.app_kwargs(service.create_app, lite0_onnx, tmp, classifier=classifier,
                    config=sa.ABUSE_CONFIG)
    app = sa.make_app(kw)
    routes = sa.served_routes(app)
    # with a classifier loaded, both upload routes answer a good image, raw and multipart
    assert {path for path, _, _ in routes} == {"/v1/embeddings", "/v1/predictions"}, routes
    return app, routes, kw


@pytest.fixture(scope="module")
def server(app_and_routes):
    with sa.running_server(app_and_routes[2]) as (proc, base):
        yield proc, base


def test_fuzz_requests_never_5xx(app_and_routes):
    app, routes, _ = app_and_routes
    found = sa.fuzz_requests(app, routes, examples=60)
    assert found["examples"] == 60
    assert not found["server_errors"], found["server_errors"][:5]
    assert set(found["statuses"]) <= {200, 400, 413, 415, 422}, found["statuses"]


def test_real_server_fuzzed_from_its_schema(server):
    """Every operation, predictions included; answers as documented (status, type, body)."""
    _, base = server
    found = sa.fuzz_server(base, examples=25)
    assert not found["failures"], found["failures"][:5]
    assert set(found["statuses"]) == {"POST /v1/embeddings", "POST /v1/predictions",
                                      "POST /v1/neighbors", "GET /v1/models", "GET /healthz",
                                      "GET /readyz", "GET /metrics"}
    # the fuzz reached the classifier, not only the error paths
    assert found["statuses"]["POST /v1/predictions"].get(200, 0) > 0, found["statuses"]


def test_real_server_sheds_overload_and_answers_abuse_with_4xx(server, app_and_routes):
    proc, base = server
    found = sa.abuse(proc, base, app_and_routes[1][0], rounds=1)
    assert found["server_alive"], "the server died"
    # 48 requests, 16 at a time, against a queue of 4 images: overload must shed
    assert found["overload_statuses"].get("503", 0) > 0, found["overload_statuses"]
    assert found["overload_statuses"].get("200", 0) > 0, found["overload_statuses"]
    assert set(found["overload_statuses"]) == {"200", "503"}, found["overload_statuses"]
    assert found["retry_after"] == [str(sa.ABUSE_CONFIG["retry_after_s"])], found["retry_after"]
    assert found["after_overload"] == [200] and found["request_after"] == 200
    # each malformed / slow / hung-up request got the status its scenario expects
    assert not found["unexpected"], found["unexpected"]
    assert len(found["scenarios"]) >= 12
    assert not found["server_5xx"], f"the server answered 5xx: {found['server_5xx']}"
    assert found["rss_growth_mb"] < 100, f"RSS grew by {found['rss_growth_mb']} MiB over the warm baseline"
