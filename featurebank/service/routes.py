"""The service's routes, one small function per group, over what ``create_app`` built.

Each ``add_*`` function registers its routes on the app; they share one :class:`Served` (the
engine, the classifier, the limits, the store and the layer catalogue), built once by
:func:`featurebank.service.app.create_app`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from featurebank.errors import FeaturebankError
from featurebank.export import featurebank_version
from featurebank.service import schemas as sc
from featurebank.service.config import ServiceConfig, ServiceError
from featurebank.service.engine import Embedded, ServingEngine
from featurebank.service.metrics import CONTENT_TYPE
from featurebank.service.uploads import UPLOAD_BODY, read_uploads


@dataclass(frozen=True)
class Served:
    """What the routes answer from."""

    engine: ServingEngine
    classifier: Any  # a featurebank.predict.load_classifier result, or None
    config: ServiceConfig
    store: str | Path | None
    catalogue: list[dict]

    @property
    def specs(self) -> list:
        return self.engine.extractor.specs


def layers_json(engine: ServingEngine) -> list[dict]:
    ex = engine.extractor
    return [{"layer": s.layer, "dim": int(d), "fingerprint": s.fingerprint(), "spec": s.to_dict()}
            for s, d in zip(ex.specs, ex.graph.dims, strict=True)]


def _wants(request: Request) -> str:
    accept = request.headers.get("accept", "")
    if sc.NPZ in accept:
        return sc.NPZ
    if sc.NPY in accept:
        return sc.NPY
    return "json"


def _binary(engine: ServingEngine, out: Embedded, kind: str) -> Response:
    buf = io.BytesIO()
    if kind == sc.NPY:
        np.save(buf, out.X)
    else:  # one array per layer, named by layer
        offsets = np.cumsum([0, *engine.extractor.graph.dims])
        arrays: dict[str, Any] = {s.layer: out.X[:, a:b] for s, a, b in zip(
            engine.extractor.specs, offsets[:-1], offsets[1:], strict=True)}
        np.savez(buf, **arrays)
    headers = {"X-Featurebank-Fingerprints": ",".join(engine.fingerprints),
               "X-Featurebank-Layers": ",".join(f"{s.layer}:{d}" for s, d in zip(
                   engine.extractor.specs, engine.extractor.graph.dims, strict=True)),
               "X-Featurebank-Cached": ",".join("1" if c else "0" for c in out.cached)}
    return Response(buf.getvalue(), media_type=kind, headers=headers)


def _images(out: Embedded) -> list[dict]:
    return [{"key": k, "cached": c} for k, c in zip(out.keys, out.cached, strict=True)]


def add_error_handlers(app: FastAPI) -> None:
    """ServiceError: its own status; FeaturebankError (bad input): 422."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.fields}, exc.status, exc.headers)

    @app.exception_handler(FeaturebankError)
    async def featurebank_error(request: Request, exc: FeaturebankError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)


def add_embedding_route(app: FastAPI, served: Served) -> None:
    engine = served.engine

    @app.post("/v1/embeddings", openapi_extra=UPLOAD_BODY, response_model=sc.EmbeddingsResponse,
              responses=sc.EMBEDDINGS_OK | sc.ERRORS,
              summary="Embed images: one raw image/* body or multipart 'files'")
    async def embeddings(request: Request) -> Response:
        """Vectors (layers concatenated in the order of `layers`), as JSON, or `.npy`
        (`Accept: application/x-npy`) or `.npz` with one array per layer
        (`Accept: application/x-npz`)."""
        out = await engine.embed_within_timeout(await read_uploads(request, served.config))
        kind = _wants(request)
        if kind != "json":
            return _binary(engine, out, kind)
        # a JSONResponse as is: FastAPI's encoder would walk every float again (2 ms per image)
        return JSONResponse({
            "embeddings": out.X.tolist(), "dim": engine.dim, "layers": layers_json(engine),
            "spec": [s.to_dict() for s in served.specs], "images": _images(out),
            "batches": [{"id": b.id, "size": b.size} for b in out.batches]})


def add_prediction_route(app: FastAPI, served: Served) -> None:
    engine, trained = served.engine, served.classifier

    @app.post("/v1/predictions", openapi_extra=UPLOAD_BODY, response_model=sc.PredictionsResponse,
              responses=sc.PREDICTIONS_ERRORS,
              summary="Labels and class probabilities from the loaded classifier")
    async def predictions(request: Request) -> Response:
        if trained is None:
            raise ServiceError(409, "no classifier is loaded; start the service with "
                                    "'featurebank serve --classifier-file CLASSIFIER.joblib'")
        out = await engine.embed_within_timeout(await read_uploads(request, served.config))
        proba = await run_in_threadpool(trained.predict_proba, out.X, served.specs)
        classes = [str(c) for c in trained.estimator.classes_]
        best = proba.argmax(axis=1)
        return JSONResponse({
            "predictions": [{"label": classes[b], "probability": float(p[b]),
                             "probabilities": dict(zip(classes, map(float, p), strict=True))}
                            for b, p in zip(best, proba, strict=True)],
            "classes": classes, "fingerprints": engine.fingerprints, "images": _images(out)})


def add_status_routes(app: FastAPI, served: Served) -> None:
    """/v1/models, /healthz, /readyz and /metrics."""
    engine, trained = served.engine, served.classifier

    @app.get("/v1/models", response_model=sc.ModelsResponse, responses=sc.AUTH_ERROR,
             summary="The served spec, the model's layer catalogue, limits")
    async def models() -> dict:
        return {"model": engine.extractor.graph.model_spec.to_dict(),
                "layers": layers_json(engine), "dim": engine.dim, "catalogue": served.catalogue,
                "classifier": None if trained is None else {
                    "classes": [str(c) for c in trained.estimator.classes_],
                    "fingerprints": trained.fingerprints, "info": trained.info},
                "store": str(served.store) if served.store else None,
                "limits": served.config.to_dict(), "featurebank_version": featurebank_version()}

    @app.get("/healthz", response_model=sc.Status, responses=sc.HEALTH_ERRORS,
             summary="The process and its inference thread are alive")
    async def healthz() -> Response | dict:
        if engine.failed:
            return JSONResponse({"status": "the inference thread died"}, 503)
        return {"status": "ok"}

    @app.get("/readyz", response_model=sc.Status, responses=sc.READY_ERRORS,
             summary="The model is loaded and warmed up")
    async def readyz() -> Response | dict:
        if engine.ready:
            return {"status": "ready"}
        return JSONResponse({"status": "starting"}, 503, {"Retry-After": "1"})

    @app.get("/metrics", response_class=PlainTextResponse, responses=sc.METRICS_AUTH_ERROR,
             summary="Prometheus metrics (text exposition format)")
    async def prometheus() -> Response:
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE)
