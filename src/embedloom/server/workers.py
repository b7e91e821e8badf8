"""``embedloom serve --workers N``: N worker processes under gunicorn.

gunicorn is the process manager: it adopts the socket embedloom bound before
the model loaded (``fd://``), forks the workers, and replaces any that dies.
Each worker runs uvicorn (through ``uvicorn-worker``) with an engine of its
own, whose thread budget is the worker's share of the whole
(``sharing.worker_budget``), so N workers never run more compute threads than
there are cores.

With ``--preload`` the master reads the model's weights before forking and
every worker shares those pages copy-on-write. The fork hazards, and what is
done about each:
- OpenMP: a team started before a fork is unusable in the child. The master
  loads with torch's intra-op pool at one thread (``PreloadedModel.load``), so
  no parallel region runs there, and it never runs inference.
- Threads: the engine's inference and offload threads start in the worker (in
  the app's lifespan), never in the master; numpy's OpenBLAS pool is kept to one
  thread in the master (its own fork handler copes with the rest).
- Tokenizers: embedloom never uses the tokenizers library's thread pool, and
  ``TOKENIZERS_PARALLELISM`` is turned off so nothing else starts it.
- Metrics: ``prometheus_client``'s multiprocess mode, in a directory made for
  this server, so ``/metrics`` of any worker shows the whole server.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from uvicorn_worker import UvicornWorker

from embedloom.config import Settings

__all__ = ["serve_workers"]

logger = logging.getLogger(__name__)


class EmbedloomWorker(UvicornWorker):  # type: ignore[misc]
    # access_log off: embedloom's middleware writes the access log, with request ids.
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "server_header": False, "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn-worker points uvicorn's loggers at gunicorn's handlers; embedloom's
        # logging (text or JSON, with request ids) is configured on the root logger.
        for name in ("uvicorn.error", "uvicorn.access"):
            _to_root(logging.getLogger(name))


def _worker_class(settings: Settings) -> type[EmbedloomWorker]:
    """The worker class with this server's transport limits (gunicorn takes a class,
    and uvicorn-worker reads its uvicorn options from the class)."""
    from embedloom.server.guard import uvicorn_limits

    options = {**EmbedloomWorker.CONFIG_KWARGS, **uvicorn_limits(settings)}
    return type("EmbedloomWorker", (EmbedloomWorker,), {"CONFIG_KWARGS": options})


class _RootLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's own messages through embedloom's logging, in the same format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        _to_root(self.error_log)
        _to_root(self.access_log)


def _to_root(log: logging.Logger) -> None:
    log.handlers = []
    log.propagate = True


def serve_workers(settings: Settings, *, listener: socket.socket | None = None) -> None:
    """Serve with ``settings.workers`` gunicorn workers until SIGTERM/SIGINT.

    ``listener``: the socket, already bound (``listen.bind_listener``); else bound
    here, before the model is resolved or the backend chosen, so an address in use
    fails at once. gunicorn adopts this very socket (fd://): no second bind."""
    from embedloom.server.listen import bind_listener

    listener = listener or bind_listener(settings.host, settings.port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="embedloom-metrics-"))
    # Read at import by the libraries they steer, so set before any of them
    # (numpy, prometheus_client, tokenizers) is imported in this process.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Loading the model imports pandas when it is installed (the ray extra brings
    # it), and pandas imports pyarrow, whose jemalloc starts a background thread
    # at import: a thread alive in the master at fork.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    from embedloom.engine import Engine
    from embedloom.sharing import worker_budget
    from embedloom.store import ModelStore, resolve_model
    from embedloom.threads import usable_cores

    try:
        per_worker = settings.replace(threads=worker_budget(settings, cores=usable_cores().usable))
        # Resolve (and fetch, once) in the master: a missing model fails here with
        # its message, instead of as N workers failing to boot; workers then find
        # it stored.
        for spec in settings.models:
            model = resolve_model(spec.ref, store=ModelStore.for_settings(settings))
            logger.info("model %s: %s from %s", spec.name, model.id, model.path)
            # Likewise the backend: the trial (a child process, so the master holds
            # no thread pools at fork) runs once here, and every worker reads its record.
            Engine.choose_backend(per_worker.for_model(spec.name))
        # gunicorn takes the descriptor over (and closes it when done).
        _Gunicorn(per_worker, metrics_dir, listener_fd=listener.detach()).run()
    finally:
        listener.close()  # a no-op once detached
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _build_app(settings: Settings, metrics_dir: Path, *, preload: bool) -> Any:
    from embedloom.engine import Engine
    from embedloom.registry import Registry
    from embedloom.server.app import create_app
    from embedloom.sharing.slots import ComputeSlots
    from embedloom.threads import usable_cores

    started = time.perf_counter()
    registry = None
    if preload:
        # Every model read once here; the workers share the pages copy-on-write.
        slots = ComputeSlots(settings.threads or usable_cores().usable)
        engines = [
            Engine.from_settings(
                settings.for_model(spec.name), preload=True, slots=slots, name=spec.name
            )
            for spec in settings.models
        ]
        registry = Registry(settings, engines=engines, slots=slots)
        threads = _native_threads()
        logger.info(
            "preloaded in the master in %.2f s; %d native thread(s) alive before fork: %s",
            time.perf_counter() - started,
            len(threads),
            ", ".join(threads),
            extra={"native_threads": len(threads)},
        )
    return create_app(settings, registry=registry, metrics_dir=metrics_dir)


def _native_threads() -> list[str]:
    """The names of this process's OS threads (Linux; empty elsewhere)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in sorted(tasks.iterdir()):
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # ended while we looked
            continue
    return names


class _Gunicorn:
    """gunicorn's ``BaseApplication``, configured from ``Settings`` (no config file)."""

    def __init__(self, settings: Settings, metrics_dir: Path, *, listener_fd: int) -> None:
        outer = self

        class Application(BaseApplication):  # type: ignore[misc]
            def load_config(self) -> None:
                for key, value in outer.options().items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                return _build_app(settings, metrics_dir, preload=settings.preload)

        self._settings = settings
        self._metrics_dir = metrics_dir
        self._listener_fd = listener_fd
        self._application = Application()

    def options(self) -> dict[str, Any]:
        settings = self._settings
        return {
            "bind": [f"fd://{self._listener_fd}"],
            "workers": settings.workers,
            "worker_class": _worker_class(settings),
            "preload_app": settings.preload,
            # Loading a model takes seconds; the default 30 s heartbeat would kill
            # a worker that is still loading on a busy machine.
            "timeout": 120,
            "graceful_timeout": max(1, round(settings.graceful_shutdown_seconds)),
            "loglevel": settings.log_level,
            "accesslog": None,  # the request middleware writes the access log
            "logger_class": _RootLogger,
            "when_ready": self._when_ready,
            "child_exit": self._child_exit,
        }

    def run(self) -> None:
        self._application.run()

    def _when_ready(self, server: Any) -> None:
        for listener in server.LISTENERS:
            host, port = listener.sock.getsockname()[:2]
            logger.info(
                "serving on http://%s:%d", host, port, extra={"workers": server.num_workers}
            )

    def _child_exit(self, server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        # The live gauges of a dead worker must not count towards the server's.
        multiprocess.mark_process_dead(worker.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
