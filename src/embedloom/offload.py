"""The one way embedloom hands work to other threads.

Both helpers run the work inside a copy of the caller's ``contextvars``
context, so the request scope (request id, and later deadline and trace)
follows the work. Nothing else in the package may create threads or call
``run_in_executor``; a test enforces it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["run_in_thread", "start_thread"]

P = ParamSpec("P")
T = TypeVar("T")

# Short blocking jobs (tokenising a request, loading files). Small on purpose:
# these threads compete with the model's compute threads for the same cores.
_OFFLOAD_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=_OFFLOAD_THREADS, thread_name_prefix="embedloom-offload"
            )
        return _executor


async def run_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call on the shared worker threads, inside the caller's context."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_shared_executor(), call)


def start_thread(target: Callable[[], object], *, name: str) -> threading.Thread:
    """Start a long-lived thread that runs ``target`` inside a copy of the caller's context.

    Daemon threads: the owners (engine, embedder) join them on close; daemon only
    keeps a forgotten handle from blocking interpreter exit.
    """
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread
