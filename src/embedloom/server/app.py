"""The ASGI application: routes, error mapping, middleware, and the engine's lifespan."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from embedloom import tracing
from embedloom._version import __version__
from embedloom.config import Settings
from embedloom.engine import Engine
from embedloom.errors import EmbedloomError, InvalidInput
from embedloom.registry import Registry
from embedloom.server import classify, cohere, openai, ops, rerank, stream, tei
from embedloom.server.docs import ASSETS_URL, DOCS_URL, OPENAPI_URL, install_docs
from embedloom.server.errors import refusal_for_status, response_for
from embedloom.server.guard import OpenRoutes, RequestGuard, load_api_keys
from embedloom.server.metrics import ServerMetrics
from embedloom.server.middleware import RequestContextMiddleware
from embedloom.server.state import ClientDisconnected, ServerState
from embedloom.server.status import (
    PAGE_ASSETS_URL,
    PAGE_URL,
    STATUS_URL,
    install_status_page,
)

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# nginx's code for "client closed request": never seen by the client, but it
# keeps abandoned requests apart from served ones in logs and metrics.
_CLIENT_CLOSED_REQUEST = 499


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    registry: Registry | None = None,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """The app serving ``settings``' models (a ``registry`` of them, or one ``engine``,
    built from ``settings`` if neither is given).

    The app loads the models on startup as far as ``max_loaded_models`` allows,
    and drains and closes them on shutdown. ``metrics_dir``: one of several worker
    processes sharing ``prometheus_client``'s multiprocess directory.
    """
    if registry is None:
        registry = Registry.of_engine(settings, engine) if engine else Registry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here, in the serving process: an exporter's thread must not be started in
        # a gunicorn master before it forks.
        if settings.tracing != "off":
            tracing.configure_tracing(settings.tracing)
        await registry.start()
        # Under --workers, one line per worker: how a supervisor (or a test) sees
        # every worker ready, not just the socket bound.
        logger.info("engine running in process %d", os.getpid(), extra={"pid": os.getpid()})
        try:
            async with metrics.mirroring():
                yield
        finally:
            await registry.close(grace=settings.graceful_shutdown_seconds)

    app = FastAPI(
        title="embedloom",
        version=__version__,
        summary="Sentence embeddings over HTTP: OpenAI- and TEI-compatible.",
        lifespan=lifespan,
        docs_url=None,  # served from the package instead (server/docs.py)
        redoc_url=None,  # ReDoc would need a CDN; /docs is the one API page
    )
    metrics = ServerMetrics(registry, multiprocess_dir=metrics_dir)
    app.state.embedloom = ServerState(registry=registry, settings=settings, metrics=metrics)
    app.include_router(openai.router)
    app.include_router(tei.router)
    app.include_router(cohere.router)
    app.include_router(rerank.router)
    app.include_router(classify.router)
    app.include_router(stream.router)
    app.include_router(ops.router)
    api_keys = load_api_keys(settings)
    install_docs(app, with_api_keys=bool(api_keys))
    install_status_page(app)
    _install_error_handlers(app)
    # Added last is outermost: the request context wraps the guard, so refusals
    # are logged and counted with a request id like every other answer.
    app.add_middleware(
        RequestGuard, settings=settings, api_keys=api_keys, open_routes=_open_routes(settings)
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, settings=settings)
    return app


def _open_routes(settings: Settings) -> OpenRoutes:
    """What needs no API key: the API's description (server/docs.py says why), and
    the status page (it holds no figures: ``/status`` has them, open only with
    ``--public-status``). ``POST /`` is TEI's model route: only ``GET /`` is open."""
    return OpenRoutes(
        paths=frozenset({DOCS_URL, OPENAPI_URL}),
        get_paths=frozenset({PAGE_URL, STATUS_URL} if settings.public_status else {PAGE_URL}),
        prefixes=(ASSETS_URL + "/", PAGE_ASSETS_URL + "/"),
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmbedloomError)
        return response_for(exc, request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        refusal = refusal_for_status(exc.status_code, str(exc.detail), exc.headers)
        return response_for(refusal, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return response_for(InvalidInput(f"invalid request: {problems}"), request.url.path)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=_CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(EmbedloomError, on_domain_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
