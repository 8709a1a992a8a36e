"""HTTP service: embeddings and predictions on demand, with dynamic batching (FastAPI).

``create_app(...)`` returns the ASGI application; ``featurebank serve`` runs it with uvicorn.
FastAPI is an optional extra (``pip install 'featurebank[service]'``). :class:`ServiceConfig`
(its limits and their defaults) loads without FastAPI; ``create_app`` loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {"API_KEY_ENV": "featurebank.service.app", "ServiceConfig": "featurebank.service.config",
         "create_app": "featurebank.service.app"}

__all__ = ["API_KEY_ENV", "ServiceConfig", "create_app"]

if TYPE_CHECKING:
    from featurebank.service.app import API_KEY_ENV, create_app
    from featurebank.service.config import ServiceConfig


__getattr__, __dir__ = attach(__name__, _LAZY)
