"""The HTTP service on real photos: same vectors as the CLI's store, shared batches, limits.

In-process through the ASGI interface (TestClient / httpx.ASGITransport); one test starts
``featurebank serve`` for real. Abuse of a running server is in tests/reliability/test_service.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from featurebank.cli import main  # noqa: E402
from featurebank.extractor.store._store import FeatureStore  # noqa: E402
from featurebank.service import ServiceConfig, create_app  # noqa: E402
from featurebank.spec import FeatureOptions  # noqa: E402
from tests._serving import served  # noqa: E402

LAYERS = ["blocks.10", "head"]
JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def jpegs(photo_dir) -> dict[str, bytes]:
    """The real photos' JPEG files by name, bytes as on disk."""
    return {p.stem: p.read_bytes() for p in sorted(photo_dir.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def cli_store(lite0_onnx, photo_dir, tmp_path_factory) -> Path:
    """What `featurebank embed --dtype float32` stores for the photos, two layers."""
    store = tmp_path_factory.mktemp("service") / "cli.h5"
    args = ["embed", str(photo_dir), "--store", str(store), "--model", str(lite0_onnx),
            "--dtype", "float32", "--no-progress"]
    for layer in LAYERS:
        args += ["--layer", layer]
    assert main(args) == 0
    return store


@pytest.fixture(scope="module")
def client(lite0_onnx):
    app = serve(lite0_onnx, LAYERS)
    with TestClient(app) as c:
        yield c


def serve(onnx: Path, layers: list[str], **kwargs):
    """The app serving ``layers`` of the ONNX file."""
    return create_app(FeatureOptions(model=str(onnx), layers=tuple(layers)), **kwargs)


def stored_vectors(store: Path, key: str) -> np.ndarray:
    s = FeatureStore(store)
    return np.hstack([s.get(fs.fingerprint, [key]) for fs in
                      sorted(s.feature_sets(), key=lambda f: LAYERS.index(f.spec.layer))])[0]


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- the vectors -------------------------------------------------------------------------------
def test_service_returns_the_vectors_the_cli_stores(client, cli_store, jpegs):
    from featurebank.extractor._preprocess import image_key

    body = client.post("/v1/embeddings", content=jpegs["coffee"], headers=JPEG).json()
    assert [la["layer"] for la in body["layers"]] == LAYERS
    assert body["dim"] == sum(la["dim"] for la in body["layers"]) == 112 + 1280
    got = np.asarray(body["embeddings"], np.float32)[0]
    want = stored_vectors(cli_store, image_key(jpegs["coffee"]))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    fps = {fs.spec.layer: fs.fingerprint for fs in FeatureStore(cli_store).feature_sets()}
    assert [la["fingerprint"] for la in body["layers"]] == [fps[la] for la in LAYERS]

    # several images in one multipart request: same vectors, same order
    names = sorted(jpegs)
    r = client.post("/v1/embeddings", files=[("files", (f"{n}.jpg", jpegs[n], "image/jpeg"))
                                              for n in names])
    assert r.status_code == 200, r.text
    X = np.asarray(r.json()["embeddings"], np.float32)
    for n, row in zip(names, X, strict=True):
        np.testing.assert_allclose(row, stored_vectors(cli_store, image_key(jpegs[n])), atol=1e-6, rtol=0)


def test_binary_answers_match_json(client, jpegs):
    files = [("files", (f"{n}.jpg", jpegs[n], "image/jpeg")) for n in ("chelsea", "rocket")]
    as_json = np.asarray(client.post("/v1/embeddings", files=files).json()["embeddings"], np.float32)
    r = client.post("/v1/embeddings", files=files, headers={"accept": "application/x-npy"})
    assert r.headers["content-type"] == "application/x-npy"
    assert r.headers["x-featurebank-layers"] == "blocks.10:112,head:1280"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), as_json)
    r = client.post("/v1/embeddings", files=files, headers={"accept": "application/x-npz"})
    arrays = np.load(io.BytesIO(r.content))
    np.testing.assert_array_equal(np.hstack([arrays[la] for la in LAYERS]), as_json)


def test_models_health_and_metrics(client, jpegs):
    models = client.get("/v1/models").json()
    assert [la["layer"] for la in models["layers"]] == LAYERS
    catalogue = {la["name"]: la for la in models["catalogue"]}
    assert catalogue["blocks.10"]["shape"] == [112, 14, 14] and "logits" in catalogue
    assert models["model"]["preprocessing"]["input_size"] == [224, 224]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}

    before = metric(client, "featurebank_requests_total", route="/v1/embeddings", status="200")
    images = metric(client, "featurebank_images_total", source="computed")
    for _ in range(3):
        assert client.post("/v1/embeddings", content=jpegs["astronaut"], headers=JPEG).status_code == 200
    assert client.post("/v1/embeddings", content=b"not an image", headers=JPEG).status_code == 422
    assert metric(client, "featurebank_requests_total", route="/v1/embeddings", status="200") == before + 3
    assert metric(client, "featurebank_requests_total", route="/v1/embeddings", status="422") >= 1
    assert metric(client, "featurebank_images_total", source="computed") == images + 3
    assert metric(client, "featurebank_batch_size_count") >= 3
    assert metric(client, "featurebank_request_seconds_count", route="/v1/embeddings") >= 4
    assert "featurebank_queue_images" in client.get("/metrics").text


# -- batching ----------------------------------------------------------------------------------
def test_concurrent_requests_share_inference_batches(lite0_onnx, jpegs):
    """Eight requests sent together land in fewer inference calls, with unchanged vectors."""
    app = serve(lite0_onnx, ["head"], config=ServiceConfig(max_batch_size=8, max_wait_ms=500))
    names = sorted(jpegs) + sorted(jpegs)[:2]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            await c.post("/v1/embeddings", content=jpegs["coffee"], headers=JPEG)  # warm up
            return await asyncio.gather(*(
                c.post("/v1/embeddings", content=jpegs[n], headers=JPEG) for n in names))

    try:
        answers = asyncio.run(run())
    finally:
        app.state.engine.stop()
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    batches = [r.json()["batches"] for r in answers]
    ids = {b["id"] for bs in batches for b in bs}
    assert len(ids) < len(names), f"{len(names)} requests ran in {len(ids)} separate batches"
    assert max(b["size"] for bs in batches for b in bs) > 1
    solo = app.state.engine.extractor.embed([jpegs[n] for n in names])["head"]
    got = np.asarray([r.json()["embeddings"][0] for r in answers], np.float32)
    np.testing.assert_allclose(got, solo, atol=1e-5, rtol=0)


def test_full_queue_answers_503_with_retry_after(lite0_onnx, jpegs):
    config = ServiceConfig(max_batch_size=1, max_wait_ms=0, max_queue_images=1, retry_after_s=2)
    app = serve(lite0_onnx, ["head"], config=config)

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
            await c.post("/v1/embeddings", content=jpegs["coffee"], headers=JPEG)
            return await asyncio.gather(*(
                c.post("/v1/embeddings", content=jpegs[n], headers=JPEG) for n in sorted(jpegs) * 3))

    try:
        answers = asyncio.run(run())
    finally:
        app.state.engine.stop()
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers["retry-after"] == "2" and "capacity" in shed.json()["detail"]


# -- the store ---------------------------------------------------------------------------------
def test_images_in_the_store_are_answered_from_it(lite0_onnx, cli_store, jpegs, tmp_path):
    from featurebank.extractor._preprocess import image_key

    app = serve(lite0_onnx, LAYERS, store=cli_store)
    novel = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(jpegs["coffee"])).rotate(90).save(novel, "JPEG")
    with TestClient(app) as c:
        batches = metric(c, "featurebank_batch_size_count")
        r = c.post("/v1/embeddings", content=jpegs["chelsea"], headers=JPEG).json()
        assert r["images"][0]["cached"] is True and r["batches"] == []
        np.testing.assert_array_equal(np.asarray(r["embeddings"][0], np.float32),
                                      stored_vectors(cli_store, image_key(jpegs["chelsea"])))
        assert metric(c, "featurebank_batch_size_count") == batches  # no inference ran
        r = c.post("/v1/embeddings", files=[("files", ("new.jpg", novel.getvalue(), "image/jpeg")),
                                            ("files", ("cat.jpg", jpegs["chelsea"], "image/jpeg"))])
        assert [im["cached"] for im in r.json()["images"]] == [False, True]
        assert metric(c, "featurebank_images_total", source="store") == 2
    # a store path that does not exist yet is simply empty
    with TestClient(serve(lite0_onnx, LAYERS, store=tmp_path / "later.h5")) as c:
        assert c.post("/v1/embeddings", content=jpegs["chelsea"], headers=JPEG).json()["images"][0]["cached"] is False


# -- predictions -------------------------------------------------------------------------------
def test_predictions_match_featurebank_predict(digits_dir, model_cache, tmp_path, capsys):
    """A classifier trained by the CLI on real digits answers over HTTP as `featurebank predict`."""
    import shutil

    train, test = tmp_path / "train", tmp_path / "test"
    for label_dir in sorted(digits_dir.iterdir()):
        files = sorted(label_dir.glob("*.png"))
        for dest, chosen in ((train, files[:12]), (test, files[12:14])):
            (dest / label_dir.name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, dest / label_dir.name / f.name)
    store, model = tmp_path / "digits.h5", tmp_path / "digits.joblib"
    assert main(["embed", str(train), "--store", str(store), "--layer", "blocks.10",
                 "--no-progress"]) == 0
    assert main(["train", str(store), "-o", str(model), "--layer", "blocks.10", "--no-baseline"]) == 0
    images = sorted(test.rglob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, images), "--json"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    with TestClient(create_app(classifier=model)) as c:  # serves the classifier's own spec
        assert [la["layer"] for la in c.get("/v1/models").json()["layers"]] == ["blocks.10"]
        r = c.post("/v1/predictions", files=[("files", (p.name, p.read_bytes(), "image/png"))
                                             for p in images])
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
    assert [a["label"] for a in answers] == [x["label"] for x in cli]
    for a, x in zip(answers, cli, strict=True):
        assert a["probability"] == pytest.approx(x["probability"], abs=1e-5)
        assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    accuracy = np.mean([a["label"] == p.parent.name for a, p in zip(answers, images, strict=True)])
    assert accuracy >= 0.7  # real digits, 12 per class: far above chance (0.1)

    # a classifier of another spec is refused at start-up, naming both
    from featurebank.classical._features import SpecMismatchError

    with pytest.raises(SpecMismatchError, match="blocks.10"):
        create_app(FeatureOptions(layers=("head",)), classifier=model)


def test_predictions_without_classifier_is_409(client, jpegs):
    r = client.post("/v1/predictions", content=jpegs["coffee"], headers=JPEG)
    assert r.status_code == 409 and "--classifier-file" in r.json()["detail"]


# -- limits and bad requests -------------------------------------------------------------------
def test_limits_and_bad_requests_get_clear_answers(lite0_onnx, jpegs):
    config = ServiceConfig(max_request_bytes=80_000, max_images_per_request=2, max_pixels=200_000)
    big = max(jpegs.values(), key=len)
    assert len(big) > 80_000
    small = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(jpegs["coffee"])).resize((320, 240)).save(small, "JPEG")
    with TestClient(serve(lite0_onnx, ["head"], config=config)) as c:
        r = c.post("/v1/embeddings", content=big, headers=JPEG)  # declared too long
        assert r.status_code == 413 and "80000 bytes" in r.json()["detail"]
        r = c.post("/v1/embeddings", content=iter([big[:50_000], big[50_000:]]), headers=JPEG)
        assert r.status_code == 413  # chunked, no Content-Length: caught while reading
        three = [("files", (f"{i}.jpg", small.getvalue(), "image/jpeg")) for i in range(3)]
        r = c.post("/v1/embeddings", files=three)
        assert r.status_code == 413 and "more than 2 images" in r.json()["detail"]
        r = c.post("/v1/embeddings", files=[("files", ("ok.jpg", small.getvalue(), "image/jpeg")),
                                            ("files", ("broken.jpg", small.getvalue()[:600], "image/jpeg"))])
        assert r.status_code == 422
        assert r.json()["image"] == "broken.jpg" and r.json()["index"] == 1
        assert "broken.jpg" in r.json()["detail"] and r.json()["reason"]
        r = c.post("/v1/embeddings", content=jpegs["coffee"], headers=JPEG)  # 400x600 > 200k px
        assert r.status_code == 422 and "pixels" in r.json()["reason"]
        r = c.post("/v1/embeddings", content=b"", headers=JPEG)
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = c.post("/v1/embeddings", content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "multipart" in r.json()["detail"]
        r = c.post("/v1/embeddings", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400 and "boundary" in r.json()["detail"].lower()
        assert c.post("/v1/embeddings", content=small.getvalue(), headers=JPEG).status_code == 200


def test_request_timeout_is_504(lite0_onnx, jpegs):
    with TestClient(serve(lite0_onnx, ["head"],
                               config=ServiceConfig(request_timeout_s=0.001))) as c:
        r = c.post("/v1/embeddings", content=jpegs["astronaut"], headers=JPEG)
        assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_api_key_is_required_when_set(lite0_onnx, jpegs, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_API_KEY", "s3cret-key")
    with TestClient(serve(lite0_onnx, ["head"])) as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "s3cret-ke"}):
            r = c.post("/v1/embeddings", content=jpegs["coffee"], headers=JPEG | headers)
            assert r.status_code == 401 and "FEATUREBANK_API_KEY" in r.json()["detail"]
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200  # probes stay open
        for headers in ({"authorization": "Bearer s3cret-key"}, {"x-api-key": "s3cret-key"}):
            assert c.post("/v1/embeddings", content=jpegs["coffee"],
                          headers=JPEG | headers).status_code == 200


# -- the schema, fuzzed --------------------------------------------------------------------------
def test_openapi_schema_fuzzed_never_5xx(lite0_onnx):
    """schemathesis generates requests for every operation of the served schema (valid and odd
    images, multipart bodies, headers): none may be answered with a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import given

    app = serve(lite0_onnx, ["head"], config=ServiceConfig(max_wait_ms=0))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/v1/embeddings"), ("POST", "/v1/predictions"), ("GET", "/v1/models")}
    statuses: dict[tuple[str, int], int] = {}
    try:
        for op in operations:
            @given(case=op.as_strategy())
            @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case):
                r = case.call()
                key = (case.operation.path, r.status_code)
                statuses[key] = statuses.get(key, 0) + 1
                assert r.status_code < 500, (key, r.text[:300])

            call()
    finally:
        app.state.engine.stop()
    # the fuzz reached the model: some generated images were valid and embedded
    assert statuses.get(("/v1/embeddings", 200), 0) > 0, statuses


# -- the command -------------------------------------------------------------------------------
def test_featurebank_serve_command(lite0_onnx, jpegs, client):
    with served("--model", lite0_onnx, "--layer", "blocks.10", "--layer", "head") as base:
        r = httpx.post(base + "/v1/embeddings", content=jpegs["rocket"], headers=JPEG, timeout=60)
        assert r.status_code == 200
        in_process = client.post("/v1/embeddings", content=jpegs["rocket"], headers=JPEG).json()
        np.testing.assert_allclose(r.json()["embeddings"], in_process["embeddings"], atol=1e-6,
                                   rtol=0)
