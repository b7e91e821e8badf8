"""Serving on Ray Serve: the embedloom app in every replica, each with its own engine.

``serve_app(...)`` builds a Serve application whose deployment wraps the same
FastAPI app as ``embedloom serve`` (``serve.ingress`` with a builder, so the app
and its engine are created in the replica, never pickled): the same routes,
error shapes, limits and keys. Each replica batches its own requests; Serve's
router spreads requests across replicas and sheds what does not fit:
``max_ongoing_requests`` per replica (keep it well above 1 so the engine has
requests to batch), then ``max_queued_requests`` waiting in the router, past
which Serve answers 503 — and inside a replica the engine's admission answers
429 as it does alone.

Several models: every replica runs the registry of all the settings' models,
as one ``embedloom serve`` does (docs/scale-out.md says why this rather than a
deployment per model behind an ingress).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedloom.config import Settings
from embedloom.distributed.data import threads_for_cpus

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

__all__ = ["EmbedloomReplica", "serve_app"]

DEFAULT_MAX_ONGOING_REQUESTS = 64
DEFAULT_MAX_QUEUED_REQUESTS = 256


class EmbedloomReplica:
    """The deployment's class; ``serve.ingress`` gives it the app's routes."""


def serve_app(
    *,
    model: str | None = None,
    replicas: int = 1,
    cpus_per_replica: float = 1.0,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
    autoscaling_config: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> Application:
    """A Ray Serve application of ``replicas`` embedloom replicas (or autoscaled with
    ``autoscaling_config``, Serve's own dict), each reserving ``cpus_per_replica``
    CPUs and running its engine on that many threads (whole, at least one)."""
    from ray import serve

    if replicas < 1 or cpus_per_replica <= 0:
        raise ValueError("replicas and cpus_per_replica must be positive")
    settings = settings or Settings.from_environment()
    if model is not None:
        settings = settings.replace(model=model)
    replica_settings = settings.replace(
        threads=threads_for_cpus(cpus_per_replica), workers=1, preload=False
    )

    def build_app() -> FastAPI:
        from embedloom.server.app import create_app

        return create_app(replica_settings)

    deployment = serve.deployment(
        name="embedloom",
        num_replicas=None if autoscaling_config else replicas,
        autoscaling_config=autoscaling_config,
        ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        # Loading and warming the model takes seconds on a busy node.
        health_check_timeout_s=60,
    )(serve.ingress(build_app)(EmbedloomReplica))
    return deployment.bind()
