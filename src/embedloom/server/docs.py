"""``/docs``: the API in Swagger UI, served from the package, so it works offline.

FastAPI's own ``/docs`` loads Swagger UI from a CDN: on an air-gapped machine
(or any without the internet) it is a blank page. Here the assets come from
the ``swagger-ui-bundle-v2`` package (Swagger UI 5, which reads the OpenAPI 3.1
that FastAPI writes), mounted under ``/docs/assets``.

With API keys set, the page, its assets and ``/openapi.json`` need no key (they
describe the API, the same for every embedloom, and a browser cannot send a
bearer header to open a page); the schema then declares the bearer scheme, so
Swagger UI's "Authorize" button sends the key with every request tried.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["ASSETS_URL", "DOCS_URL", "OPENAPI_URL", "install_docs"]

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI, *, with_api_keys: bool) -> None:
    """Serve ``/docs`` from local assets on ``app`` (made with ``docs_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} — API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
        )

    if with_api_keys:
        app.openapi = lambda: _with_bearer_scheme(app)  # type: ignore[method-assign]


def _with_bearer_scheme(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"apiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema
