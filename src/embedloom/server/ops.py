"""Operational routes: health, info, metrics. None of them touches the model's queue."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from embedloom._version import __version__
from embedloom.errors import Unavailable
from embedloom.offload import OFFLOAD_THREADS
from embedloom.registry import ModelStatus, Registry
from embedloom.server.state import server_state

__all__ = ["model_entry", "router"]

router = APIRouter()


@router.get(
    "/health",
    summary="200 while every loaded model answers, 503 otherwise (a model not loaded, or "
    "loading, does not count: it is loaded when asked for)",
)
async def health(request: Request) -> dict[str, str]:
    for name, engine in server_state(request).registry.engines():
        reason = engine.unhealthy_reason
        if reason is not None:
            raise Unavailable(f"model {name}: {reason}")
    return {"status": "ok"}


# TEI's spelling of dtypes in /info.
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


@router.get(
    "/info",
    summary="The default model in TEI's shape, every served model under 'models', and the "
    "server's limits",
)
async def info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    registry = state.registry
    models = [model_entry(registry, status) for status in registry.statistics().models]
    settings = state.settings
    default = models[0]
    return {
        **{k: v for k, v in default.items() if k not in ("name", "state", "names")},
        # TEI's required fields, for the default model (docs/compatibility.md says
        # how each maps onto embedloom's settings).
        "served_model_name": default["name"],
        "model_type": _tei_model_type(default),
        "model_sha": None,
        "max_concurrent_requests": default["max_queued_inputs"],
        "max_batch_requests": default["max_batch_size"],
        "tokenization_workers": OFFLOAD_THREADS,
        "sha": None,
        "docker_label": None,
        "model_names": list(default["names"]),
        "max_client_batch_size": settings.max_client_batch_size,
        "auto_truncate": settings.auto_truncate,
        "thread_budget": registry.slots.budget,
        "models": models,
        "version": __version__,
    }


@router.get("/v1/models", summary="The served models (OpenAI-compatible)")
async def list_models(request: Request) -> dict[str, Any]:
    registry = server_state(request).registry
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": _STARTED, "owned_by": "embedloom"}
            for name in registry.names()
        ],
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


# OpenAI's "created": when this server started serving its models.
_STARTED = int(time.time())


_ROUTES_OF = {
    "embedding": ["embed", "rerank (bi-encoder)", "similarity", "embed_all"],
    "cross-encoder": ["rerank", "predict", "score"],
    "sparse": ["embed_sparse"],
}


def _tei_model_type(model: dict[str, Any]) -> dict[str, Any]:
    """TEI's ``model_type`` for a model's /info entry: a reranker (one label), a
    classifier, or an embedding model with its pooling (SPLADE's: ``splade``)."""
    if model["kind"] == "cross-encoder":
        labels = model["labels"] or {}
        return {("reranker" if len(labels) == 1 else "classifier"): {"id2label": labels}}
    return {"embedding": {"pooling": model["pooling"] or "mean"}}


def model_entry(registry: Registry, status: ModelStatus) -> dict[str, Any]:
    """One model's entry in /info and on the status page; what only a loaded model
    knows is null otherwise."""
    settings = registry.settings_of(status.name)
    entry: dict[str, Any] = {
        "name": status.name,
        "names": list(status.names),
        "state": status.state.value,
        "model_id": status.model_id,
        "model_dtype": None,
        "backend": None,
        "backend_choice": None,
        "dimensions": None,
        "max_input_length": None,
        "normalizes": None,
        "pooling": None,
        "kind": None,
        "tasks": None,
        "labels": None,
        "prompts": None,
        "default_prompt_name": None,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_size": settings.max_batch_size,
        "max_queued_inputs": settings.max_queued_inputs,
        "keep_alive": settings.keep_alive,
        "sharing": None,
        "replicas": None,
        "inference_threads": None,
        "threads_per_replica": None,
    }
    engine = registry.loaded_engine(status.name)
    if engine is None:
        return entry
    model = engine.model_info
    worker = engine.statistics().worker
    return entry | {
        "model_id": model.model_id,
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
        "pooling": model.pooling,
        # The model's kind (embedding, cross-encoder, sparse) and what it answers.
        "kind": model.kind,
        "tasks": _ROUTES_OF[model.kind],
        "labels": model.score_head.id2label if model.score_head else None,
        "prompts": dict(engine.prompts.prompts),
        "default_prompt_name": engine.prompts.default_name,
        "sharing": worker.strategy,
        "replicas": worker.replicas,
        "inference_threads": worker.inference_threads,
        "threads_per_replica": worker.threads_per_replica,
    }
