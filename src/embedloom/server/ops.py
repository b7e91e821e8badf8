"""Operational routes: health, info, metrics. None of them touches the model's queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from embedloom._version import __version__
from embedloom.engine import Engine
from embedloom.errors import Unavailable
from embedloom.server.state import server_state

__all__ = ["router"]

router = APIRouter()


@router.get("/health", summary="200 while the model answers, 503 otherwise")
async def health(request: Request) -> dict[str, str]:
    reason = server_state(request).engine.unhealthy_reason
    if reason is not None:
        raise Unavailable(reason)
    return {"status": "ok"}


# TEI's spelling of dtypes in /info.
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


@router.get("/info", summary="The served model and the server's limits")
async def info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    model = state.engine.model_info
    return {
        "model_id": model.model_id,
        "model_names": list(model.names),
        "model_dtype": _DTYPE_NAMES.get(model.dtype, model.dtype),
        "backend": model.backend,
        "backend_choice": {
            "variant": f"{model.backend}/{model.dtype}",
            "reason": model.choice_reason,
            # Figures against fp32 torch on the calibration set; None for fp32 torch.
            "accuracy_gate": model.gate.to_json() if model.gate else None,
        },
        "dimensions": model.dimensions,
        "max_input_length": model.max_input_tokens,
        "normalizes": model.normalizes,
        "max_batch_tokens": state.settings.max_batch_tokens,
        "max_batch_size": state.settings.max_batch_size,
        "max_client_batch_size": state.settings.max_client_batch_size,
        "max_queued_inputs": state.settings.max_queued_inputs,
        "auto_truncate": state.settings.auto_truncate,
        **_sharing(state.engine),
        "version": __version__,
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _sharing(engine: Engine) -> dict[str, Any]:
    worker = engine.statistics().worker
    return {
        "sharing": worker.strategy,
        "replicas": worker.replicas,
        "inference_threads": worker.inference_threads,
        "threads_per_replica": worker.threads_per_replica,
        "thread_budget": engine.sharing.budget,
    }
