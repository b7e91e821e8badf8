"""The command-line faces of the Ray integration: ``embed --ray`` and ``serve --ray``."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from embedloom.config import Settings
from embedloom.distributed.batch import RayJobOptions, RayJobSummary, run_ray_job
from embedloom.distributed.serving import serve_app

__all__ = ["embed_on_ray", "serve_on_ray"]

logger = logging.getLogger(__name__)


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        # None: the cluster in RAY_ADDRESS, else a new local one.
        ray.init(address=address, log_to_driver=False)


def embed_on_ray(
    options: RayJobOptions, settings: Settings, *, address: str | None
) -> RayJobSummary:
    """``embed --ray``: connect (or start a local Ray), and run the job there."""
    _connect(address)
    summary = run_ray_job(options, settings)
    logger.info("%s", summary.line())
    return summary


def serve_on_ray(
    settings: Settings, *, address: str | None, replicas: int, cpus_per_replica: float
) -> None:
    """Run the embedloom app on Ray Serve at ``settings.host:settings.port`` until
    SIGTERM/SIGINT, then shut the application down."""
    from ray import serve

    _connect(address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(
        serve_app(replicas=replicas, cpus_per_replica=cpus_per_replica, settings=settings),
        name="embedloom",
    )
    logger.info(
        "serving on http://%s:%d (Ray Serve, %d replica(s))", settings.host, settings.port, replicas
    )
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    stop.wait()
    serve.delete("embedloom")
    serve.shutdown()  # type: ignore[no-untyped-call]
