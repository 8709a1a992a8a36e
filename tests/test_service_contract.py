"""The service's contract: what /openapi.json documents is what the routes answer.

Real answers of every route (JSON, npy/npz, text metrics, errors) are validated against the
schema the app serves; the docs pages load with no network; every served path has its own
metrics label.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed")
jsonschema = pytest.importorskip("jsonschema")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from featurebank.cli import main  # noqa: E402
from featurebank.service import create_app  # noqa: E402
from featurebank.spec import FeatureOptions  # noqa: E402

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def classifier(digits_dir, lite0_onnx, tmp_path_factory) -> Path:
    """A classifier trained by the CLI on three digits, six scans each."""
    work = tmp_path_factory.mktemp("contract")
    for label in ("0", "1", "2"):
        (work / "train" / label).mkdir(parents=True)
        for f in sorted((digits_dir / label).glob("*.png"))[:6]:
            shutil.copy(f, work / "train" / label / f.name)
    store, model = work / "digits.h5", work / "digits.joblib"
    assert main(["embed", str(work / "train"), "--store", str(store), "--model", str(lite0_onnx),
                 "--layer", "blocks.10", "--no-progress"]) == 0
    assert main(["train", str(store), "-o", str(model), "--layer", "blocks.10",
                 "--no-baseline"]) == 0
    return model


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier=classifier)) as c:
        yield c


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


def png(digits_dir: Path, label: str = "1") -> bytes:
    return sorted((digits_dir / label).glob("*.png"))[-1].read_bytes()


def conforms(openapi: dict, path: str, method: str, r) -> None:
    """``r`` is an answer the schema documents: its status, media type and (JSON) body."""
    responses = openapi["paths"][path][method]["responses"]
    assert str(r.status_code) in responses, (path, r.status_code, "undocumented status")
    media = r.headers["content-type"].split(";")[0].strip()
    content = responses[str(r.status_code)]["content"]
    assert media in content, (path, r.status_code, media, "undocumented media type", list(content))
    schema = content[media]["schema"]
    if media == "application/json":
        jsonschema.validate(r.json(), {**schema, "components": openapi["components"]},
                            cls=jsonschema.Draft202012Validator)


def test_every_answer_has_a_documented_schema(openapi):
    """No empty 200 schema: each JSON answer names its model, with its fields listed."""
    comps = openapi["components"]["schemas"]
    ops = {(m, p): op for p, o in openapi["paths"].items() for m, op in o.items()}
    assert set(ops) == {("post", "/v1/embeddings"), ("post", "/v1/predictions"),
                        ("post", "/v1/neighbors"), ("get", "/v1/models"), ("get", "/healthz"), ("get", "/readyz"),
                        ("get", "/metrics")}
    for (_, path), op in ops.items():
        for status, answer in op["responses"].items():
            for media, body in answer["content"].items():
                if media != "application/json":
                    continue
                ref = body["schema"].get("$ref", "")
                assert ref.startswith("#/components/schemas/"), (path, status, body["schema"])
                model = comps[ref.rsplit("/", 1)[1]]
                assert model["properties"] and model["additionalProperties"] is False, (path, ref)
    embed = ops["post", "/v1/embeddings"]["responses"]["200"]
    assert embed["content"]["application/x-npy"]["schema"]["format"] == "binary"
    assert embed["content"]["application/x-npz"]["schema"]["format"] == "binary"
    assert set(embed["headers"]) >= {"X-Featurebank-Layers", "X-Featurebank-Fingerprints"}
    assert list(ops["get", "/metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "Retry-After" in ops["post", "/v1/embeddings"]["responses"]["503"]["headers"]
    assert "409" in ops["post", "/v1/predictions"]["responses"]


def test_real_answers_conform_to_the_schema(client, openapi, digits_dir):
    files = [("files", (f"{d}.png", png(digits_dir, d), "image/png")) for d in ("0", "1", "2")]
    r = client.post("/v1/embeddings", files=files)
    conforms(openapi, "/v1/embeddings", "post", r)
    as_json = np.asarray(r.json()["embeddings"], np.float32)
    for accept in ("application/x-npy", "application/x-npz"):
        r = client.post("/v1/embeddings", files=files, headers={"accept": accept})
        conforms(openapi, "/v1/embeddings", "post", r)
        arrays = np.load(io.BytesIO(r.content))
        got = arrays if accept.endswith("npy") else arrays["blocks.10"]
        np.testing.assert_array_equal(got, as_json)
    r = client.post("/v1/predictions", files=files)
    conforms(openapi, "/v1/predictions", "post", r)
    assert [p["label"] for p in r.json()["predictions"]] == ["0", "1", "2"]
    for path in ("/v1/models", "/healthz", "/readyz", "/metrics"):
        conforms(openapi, path, "get", client.get(path))
    # errors: their bodies are documented too
    bad = [client.post("/v1/embeddings", content=b"not an image", headers=JPEG),
           client.post("/v1/embeddings", content=b"x", headers={"content-type": "text/plain"}),
           client.post("/v1/embeddings", content=b"--x\r\n",
                       headers={"content-type": "multipart/form-data"})]
    assert [r.status_code for r in bad] == [422, 415, 400]
    for r in bad:
        conforms(openapi, "/v1/embeddings", "post", r)
    assert bad[0].json()["image"] == "body" and bad[0].json()["reason"]

    # the check bites: a field the schema does not list is refused
    answer = client.post("/v1/embeddings", content=png(digits_dir), headers=JPEG).json()
    schema = openapi["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    with pytest.raises(jsonschema.ValidationError, match="unexpected"):
        jsonschema.validate(answer | {"undocumented": 1},
                            {**schema, "components": openapi["components"]},
                            cls=jsonschema.Draft202012Validator)


def test_unauthorised_answers_are_documented(lite0_onnx, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_API_KEY", "k3y")
    with TestClient(create_app(FeatureOptions(model=str(lite0_onnx)))) as c:
        openapi = c.get("/openapi.json").json()  # open, like the docs
        for method, path in (("get", "/metrics"), ("get", "/v1/models"),
                             ("post", "/v1/embeddings")):
            r = c.request(method.upper(), path)
            assert r.status_code == 401
            conforms(openapi, path, method, r)


def test_docs_pages_need_no_network(client, monkeypatch):
    """/docs and /redoc reference only files the service itself serves (no CDN, no fonts, no
    validator), and those files are the real Swagger UI / ReDoc bundles."""
    monkeypatch.setenv("FEATUREBANK_API_KEY", "k3y")  # the pages stay open with a key set
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        assert "http://" not in html and "https://" not in html, html
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert any(ref.endswith(script) for ref in refs), refs
        for ref in refs:
            assert ref.startswith("/docs/assets/"), ref
            r = client.get(ref)
            assert r.status_code == 200 and len(r.content) > 1000, (ref, r.status_code)
        bundle = client.get(f"/docs/assets/{script}")
        assert "javascript" in bundle.headers["content-type"] and len(bundle.content) > 500_000
    assert '"validatorUrl": null' in client.get("/docs").text
    assert "openapi.json" in client.get("/docs").text


def test_every_served_path_has_its_metrics_label(lite0_onnx, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_API_KEY", "k3y")
    key = {"x-api-key": "k3y"}
    app = create_app(FeatureOptions(model=str(lite0_onnx)))
    with TestClient(app) as c:
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/assets/swagger-ui.css",
                     "/healthz", "/readyz", "/v1/models", "/metrics"):
            assert c.get(path, headers=key).status_code == 200, path
        c.post("/v1/embeddings", content=b"", headers=JPEG | key)            # 422, routed
        c.post("/v1/predictions", content=b"x", headers=JPEG)                # 401, before routing
        assert c.get("/v1/embeddings", headers=key).status_code == 405      # wrong method
        assert c.get("/no/such/path", headers=key).status_code == 404
        text = c.get("/metrics", headers=key).text
    counted = {(s.labels["route"], s.labels["status"]) for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "featurebank_requests_total"}
    routes = {r for r, _ in counted}
    assert routes == {"/openapi.json", "/docs", "/redoc", "/docs/assets", "/healthz", "/readyz",
                      "/v1/models", "/metrics", "/v1/embeddings", "/v1/predictions", "unmatched"}
    assert {s for r, s in counted if r == "unmatched"} == {"404"}
    assert {("/v1/predictions", "401"), ("/v1/embeddings", "405"),
            ("/v1/embeddings", "422")} <= counted
