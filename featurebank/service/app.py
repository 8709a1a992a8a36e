"""The FastAPI application: routes over the serving engine.

``create_app`` builds everything that can fail from its arguments at once (model file, layers,
classifier and its spec, store), so ``featurebank serve`` with a bad argument stops with a clear
message instead of answering 500s later. The session is created and warmed up at start-up.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from featurebank.errors import FeaturebankError
from featurebank.export import read_onnx_metadata
from featurebank.export._metadata import featurebank_version
from featurebank.extractor import Extractor, resolve_model_path
from featurebank.service import schemas as sc
from featurebank.service.config import ServiceConfig, ServiceError
from featurebank.service.docs import add_offline_docs
from featurebank.service.engine import Embedded, ServingEngine
from featurebank.service.guard import GuardMiddleware
from featurebank.service.metrics import CONTENT_TYPE, ServiceMetrics
from featurebank.service.uploads import UPLOAD_BODY, read_uploads
from featurebank.spec import FeatureOptions

log = logging.getLogger(__name__)
API_KEY_ENV = "FEATUREBANK_API_KEY"
NPY, NPZ = sc.NPY, sc.NPZ


def _build_extractor(features: FeatureOptions | None, device: str, threads: int | None,
                     classifier, max_pixels: int):
    """The extractor to serve and the classifier bound to it (None without one)."""
    trained = None
    if classifier is None and features is not None:
        from featurebank.finetune import is_tuned_onnx, load_tuned

        if is_tuned_onnx(features.model):  # a fine-tuned model classifies with its logits
            if features.layers == ("head",):  # the default layer: serve its logits instead
                features = features.replace(layers=("logits",))
            if features.layers == ("logits",):
                trained = load_tuned(features.model)
    elif classifier is not None and str(classifier).lower().endswith(".onnx"):
        from featurebank.finetune import load_tuned

        trained = load_tuned(classifier)
    elif classifier is not None:
        from featurebank.classical import load_model

        trained = load_model(classifier)
    if trained is not None and features is None:  # serve exactly what the classifier needs
        ex = trained.extractor(device=device, threads=threads, max_pixels=max_pixels)
        return ex, trained
    ex = Extractor(features, device=device, threads=threads, max_pixels=max_pixels)
    if trained is not None:
        trained.check_specs(ex.specs)  # SpecMismatchError naming both specs
    return ex, trained


def _layers_json(engine: ServingEngine) -> list[dict]:
    ex = engine.extractor
    return [{"layer": s.layer, "dim": int(d), "fingerprint": s.fingerprint(), "spec": s.to_dict()}
            for s, d in zip(ex.specs, ex.graph.dims, strict=True)]


def _wants(request: Request) -> str:
    accept = request.headers.get("accept", "")
    if NPZ in accept:
        return NPZ
    if NPY in accept:
        return NPY
    return "json"


def _binary(engine: ServingEngine, out: Embedded, kind: str) -> Response:
    buf = io.BytesIO()
    if kind == NPY:
        np.save(buf, out.X)
    else:  # one array per layer, named by layer
        offsets = np.cumsum([0, *engine.extractor.graph.dims])
        np.savez(buf, **{s.layer: out.X[:, a:b] for s, a, b in
                         zip(engine.extractor.specs, offsets[:-1], offsets[1:], strict=True)})
    headers = {"X-Featurebank-Fingerprints": ",".join(engine.fingerprints),
               "X-Featurebank-Layers": ",".join(f"{s.layer}:{d}" for s, d in zip(
                   engine.extractor.specs, engine.extractor.graph.dims, strict=True)),
               "X-Featurebank-Cached": ",".join("1" if c else "0" for c in out.cached)}
    return Response(buf.getvalue(), media_type=kind, headers=headers)


def create_app(features: FeatureOptions | str | Path | None = None, *,
               classifier: str | Path | None = None, store: str | Path | None = None,
               device: str = "auto", threads: int | None = None, api_key: str | None = None,
               config: ServiceConfig | None = None) -> FastAPI:
    """The feature-extraction and prediction service as an ASGI application.

    Parameters
    ----------
    features : FeatureOptions, str or path, optional
        What to serve (a model name or ``.onnx`` file means its ``head``); layers are
        concatenated in their order. Default: the classifier's own spec, else the default
        model's ``head``.
    classifier : path, optional
        A ``featurebank train`` model: enables ``/v1/predictions``. Its spec must match.
    store : path, optional
        Feature store consulted (read-only) before computing: stored content is answered from it.
    device, threads : see :class:`featurebank.extractor.Extractor`
    api_key : str, optional
        Required on ``/v1/*`` and ``/metrics`` when set (default: ``$FEATUREBANK_API_KEY``).
    config : ServiceConfig, optional
        Batching and limits.

    Examples
    --------
    >>> app = create_app(FeatureOptions(layers=("blocks.13",)))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, port=8000)              # doctest: +SKIP
    """
    config = config or ServiceConfig()
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if features is not None and not isinstance(features, FeatureOptions):
        features = FeatureOptions(model=str(features))
    ex, trained = _build_extractor(features, device, threads, classifier, config.max_pixels)
    metrics = ServiceMetrics()
    engine = ServingEngine(ex, config, metrics, store)
    catalogue = [vars(la) | {"shape": list(la.shape)} for la in
                 read_onnx_metadata(resolve_model_path(ex.model, ex.options.input_size)).layers]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(engine.start)
        log.info("serving %s, %d-dim vectors", ", ".join(s.describe() for s in ex.specs), engine.dim)
        yield
        engine.stop()

    app = FastAPI(title="featurebank", version=featurebank_version(), lifespan=lifespan,
                  description="Embeddings and predictions from a frozen CNN cut at chosen layers; "
                              "the vectors `featurebank embed` stores.",
                  docs_url=None, redoc_url=None)  # served from local files below
    add_offline_docs(app)
    app.state.engine = engine
    app.state.metrics = metrics
    # the routes list is filled below; the guard reads it per request to label metrics
    app.add_middleware(GuardMiddleware, metrics=metrics, api_key=api_key,
                       max_request_bytes=config.max_request_bytes, routes=app.router.routes)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.fields}, exc.status, exc.headers)

    @app.exception_handler(FeaturebankError)
    async def featurebank_error(request: Request, exc: FeaturebankError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.post("/v1/embeddings", openapi_extra=UPLOAD_BODY, response_model=sc.EmbeddingsResponse,
              responses=sc.EMBEDDINGS_OK | sc.ERRORS,
              summary="Embed images: one raw image/* body or multipart 'files'")
    async def embeddings(request: Request) -> Response:
        """Vectors (layers concatenated in the order of `layers`), as JSON, or `.npy`
        (`Accept: application/x-npy`) or `.npz` with one array per layer
        (`Accept: application/x-npz`)."""
        out = await engine.embed_within_timeout(await read_uploads(request, config))
        kind = _wants(request)
        if kind != "json":
            return _binary(engine, out, kind)
        # a JSONResponse as is: FastAPI's encoder would walk every float again (2 ms per image)
        return JSONResponse({
            "embeddings": out.X.tolist(), "dim": engine.dim,
            "layers": _layers_json(engine), "spec": [s.to_dict() for s in ex.specs],
            "images": [{"key": k, "cached": c} for k, c in zip(out.keys, out.cached, strict=True)],
            "batches": [{"id": b.id, "size": b.size} for b in out.batches]})

    @app.post("/v1/predictions", openapi_extra=UPLOAD_BODY, response_model=sc.PredictionsResponse,
              responses=sc.PREDICTIONS_ERRORS,
              summary="Labels and class probabilities from the loaded classifier")
    async def predictions(request: Request) -> Response:
        if trained is None:
            raise ServiceError(409, "no classifier is loaded; start the service with "
                                    "'featurebank serve --classifier MODEL.joblib'")
        out = await engine.embed_within_timeout(await read_uploads(request, config))
        proba = await run_in_threadpool(trained.predict_proba, out.X, ex.specs)
        classes = [str(c) for c in trained.estimator.classes_]
        best = proba.argmax(axis=1)
        return JSONResponse({
            "predictions": [{"label": classes[b], "probability": float(p[b]),
                             "probabilities": dict(zip(classes, map(float, p), strict=True))}
                            for b, p in zip(best, proba, strict=True)],
            "classes": classes, "fingerprints": engine.fingerprints,
            "images": [{"key": k, "cached": c} for k, c in zip(out.keys, out.cached, strict=True)]})

    @app.get("/v1/models", response_model=sc.ModelsResponse, responses=sc.AUTH_ERROR,
             summary="The served spec, the model's layer catalogue, limits")
    async def models() -> dict:
        return {"model": ex.graph.model_spec.to_dict(), "layers": _layers_json(engine),
                "dim": engine.dim, "catalogue": catalogue,
                "classifier": None if trained is None else {
                    "classes": [str(c) for c in trained.estimator.classes_],
                    "fingerprints": trained.fingerprints, "info": trained.info},
                "store": str(store) if store else None, "limits": config.to_dict(),
                "featurebank_version": featurebank_version()}

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
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
