"""HTTP service: embeddings and predictions on demand, with dynamic batching (FastAPI).

``create_app(...)`` returns the ASGI application; ``featurebank serve`` runs it with uvicorn.
FastAPI is an optional extra (``pip install 'featurebank[service]'``).
"""

from featurebank.service.app import API_KEY_ENV, create_app
from featurebank.service.config import ServiceConfig

__all__ = ["API_KEY_ENV", "ServiceConfig", "create_app"]
