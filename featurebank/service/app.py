"""The FastAPI application: routes (``routes.py``) over the serving engine.

``create_app`` builds everything that can fail from its arguments at once (model file, layers,
classifier and its spec, store), so ``featurebank serve`` with a bad argument stops with a clear
message instead of answering 500s later. The session is created and warmed up at start-up.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from featurebank.export import featurebank_version, read_onnx_metadata
from featurebank.extractor import resolve_model_path
from featurebank.predict import classifier_extractor
from featurebank.service.config import ServiceConfig
from featurebank.service.docs import add_offline_docs
from featurebank.service.engine import ServingEngine
from featurebank.service.guard import GuardMiddleware
from featurebank.service.metrics import ServiceMetrics
from featurebank.service.routes import (
    Served,
    add_embedding_route,
    add_error_handlers,
    add_neighbors_route,
    add_prediction_route,
    add_status_routes,
)
from featurebank.spec import FeatureOptions

log = logging.getLogger(__name__)
API_KEY_ENV = "FEATUREBANK_API_KEY"


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
        A ``featurebank train`` model (``.joblib``) or a ``featurebank finetune`` model
        (``.onnx``; :func:`featurebank.predict.load_classifier`): enables
        ``/v1/predictions``. Its spec must match.
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
    ex, trained = classifier_extractor(features, classifier, device=device, threads=threads,
                                       max_pixels=config.max_pixels)
    metrics = ServiceMetrics()
    engine = ServingEngine(ex, config, metrics, store)
    catalogue = [vars(la) | {"shape": list(la.shape)} for la in
                 read_onnx_metadata(resolve_model_path(ex.model, ex.options.input_size)).layers]

    app = FastAPI(title="featurebank", version=featurebank_version(),
                  lifespan=_lifespan(engine), docs_url=None, redoc_url=None,
                  description="Embeddings and predictions from a frozen CNN cut at chosen "
                              "layers; the vectors `featurebank embed` stores.")
    add_offline_docs(app)  # served from local files, not a CDN
    app.state.engine = engine
    app.state.metrics = metrics
    # the routes list is filled below; the guard reads it per request to label metrics
    app.add_middleware(GuardMiddleware, metrics=metrics, api_key=api_key,
                       max_request_bytes=config.max_request_bytes, routes=app.router.routes)
    add_error_handlers(app)
    served = Served(engine, trained, config, store, catalogue)
    add_embedding_route(app, served)
    add_prediction_route(app, served)
    add_neighbors_route(app, served)
    add_status_routes(app, served)
    return app


def _lifespan(engine: ServingEngine):
    """Start (and warm up) the engine before the first request; stop it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(engine.start)
        log.info("serving %s, %d-dim vectors",
                 ", ".join(s.describe() for s in engine.extractor.specs), engine.dim)
        yield
        engine.stop()

    return lifespan
