"""The status page: ``GET /`` in a browser, and the ``GET /status`` figures it charts.

``POST /`` stays TEI's route; only ``GET /`` is the page. The page and its
script and style come from the package (``server/status_page``), so it works
with no network but the server's; its script polls ``/status`` every second
and draws the charts itself (no charting library, no CDN).

``/status`` describes the models (the same entries as ``/info``: backend
choice and gate figures, sharing plan) and carries the cumulative counters and
histograms of ``/metrics`` that the charts difference into rates and
percentiles. Under ``--workers`` the figures are the fleet's (every worker's,
from the shared multiprocess metrics, as ``/metrics`` sums them), while the
model descriptions are the answering process's; ``figures.scope`` says which.

With API keys, the page itself (it holds no figures) and its assets need no
key; ``/status`` needs one unless ``--public-status``, and the page asks for it
and sends it as a bearer header, never in a URL.
"""

from __future__ import annotations

import os
import time
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from embedloom._version import __version__
from embedloom.server.ops import model_entry
from embedloom.server.state import server_state

__all__ = ["PAGE_ASSETS_URL", "PAGE_URL", "STATUS_URL", "install_status_page", "status_figures"]

PAGE_URL = "/"
STATUS_URL = "/status"
PAGE_ASSETS_URL = "/status/assets"
_PAGE_DIRECTORY = resources.files("embedloom.server") / "status_page"

router = APIRouter()


def install_status_page(app: FastAPI) -> None:
    app.mount(PAGE_ASSETS_URL, StaticFiles(directory=str(_PAGE_DIRECTORY)), name="status-page")
    app.include_router(router)


@cache
def _page() -> str:
    return (_PAGE_DIRECTORY / "index.html").read_text(encoding="utf-8")


@router.get(PAGE_URL, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return HTMLResponse(_page().replace("{{root}}", root))


@router.get(
    STATUS_URL,
    summary="What the status page shows: the models, their backend choice and sharing plan, "
    "and the cumulative figures of /metrics (the fleet's under --workers)",
)
async def status(request: Request) -> dict[str, Any]:
    state = server_state(request)
    registry = state.registry
    statistics = registry.statistics()
    return {
        "version": __version__,
        "time": time.time(),
        "pid": os.getpid(),
        "workers": state.settings.workers,
        "thread_budget": statistics.slots.budget,
        "compute_slots_held": statistics.slots.held,
        "models": [model_entry(registry, model) for model in statistics.models],
        "figures": status_figures(
            list(state.metrics.samples()),
            scope="fleet" if state.metrics.fleet_wide else "process",
        ),
    }


_MODEL_COUNTERS = {
    "embedloom_inputs_embedded_total": "inputs_embedded",
    "embedloom_input_tokens_total": "input_tokens",
    "embedloom_queue_size": "queued_inputs",
    "embedloom_running_batches": "running_batches",
    "embedloom_batch_size_count": "batches",
    "embedloom_batch_size_sum": "batched_inputs",
}


def status_figures(
    samples: list[tuple[str, dict[str, str], float]], *, scope: str
) -> dict[str, Any]:
    """The series the page charts, from ``/metrics``' samples (name, labels, value):
    per model its counters and gauges, and the request-duration histogram of the
    routes that run a model together (cumulative bucket counts by upper bound).

    Those routes are the ones POSTed to: GET routes describe the server (and
    ``GET /`` is this page, whose loads are few beside ``POST /``'s, TEI's).
    """
    model_routes = {
        labels["route"]
        for name, labels, _ in samples
        if name == "embedloom_http_requests_total" and labels.get("method") == "POST"
    }
    models: dict[str, dict[str, Any]] = {}
    latency: dict[str, float] = {}
    for name, labels, value in samples:
        model = labels.get("model")
        if model is not None and name in _MODEL_COUNTERS:
            _figures_of(models, model)[_MODEL_COUNTERS[name]] = value
        elif model is not None and name == "embedloom_engine_requests_total":
            _figures_of(models, model)["requests"][labels["outcome"]] = value
        elif (
            name == "embedloom_http_request_duration_seconds_bucket"
            and labels.get("route") in model_routes
        ):
            latency[labels["le"]] = latency.get(labels["le"], 0.0) + value
    ordered = sorted(latency, key=float)
    return {
        "scope": scope,
        "models": models,
        # JSON has no infinity: the last count (above every bound) has no bound.
        "request_seconds": {
            "bounds": [float(bound) for bound in ordered if bound != "+Inf"],
            "cumulative": [latency[bound] for bound in ordered],
        },
    }


def _figures_of(models: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    return models.setdefault(
        model,
        {"requests": {}} | dict.fromkeys(_MODEL_COUNTERS.values(), 0.0),
    )
