"""``/docs`` (Swagger UI) and ``/redoc`` served with no network: the pages and their assets come
from the installed ``fastapi-offline`` package, not from a CDN (FastAPI's default pages are blank
offline). Only the static files of that package are used; the app stays a plain FastAPI.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from featurebank.errors import FeaturebankError

ASSETS = "/docs/assets"


def _static_dir() -> Path:
    try:
        import fastapi_offline
    except ImportError:
        raise FeaturebankError("the service's /docs page needs the 'fastapi-offline' package; "
                               "install the service extra: pip install 'featurebank[service]'") from None
    return Path(fastapi_offline.__file__).parent / "static"


def _local(request: Request, path: str) -> str:
    """``path`` under the prefix the app is mounted at (behind a proxy, root_path)."""
    return f"{request.scope.get('root_path', '')}{path}"


def add_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local files (the app is made with docs_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=_static_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=_local(request, app.openapi_url), title=f"{app.title} - Swagger UI",
            swagger_js_url=_local(request, f"{ASSETS}/swagger-ui-bundle.js"),
            swagger_css_url=_local(request, f"{ASSETS}/swagger-ui.css"),
            swagger_favicon_url=_local(request, f"{ASSETS}/favicon.png"),
            # Swagger UI would otherwise send the schema to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=_local(request, app.openapi_url), title=f"{app.title} - ReDoc",
            redoc_js_url=_local(request, f"{ASSETS}/redoc.standalone.js"),
            redoc_favicon_url=_local(request, f"{ASSETS}/favicon.png"), with_google_fonts=False)
