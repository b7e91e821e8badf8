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
import multiprocessing
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar

__all__ = [
    "ThreadIterator",
    "iterate_in_thread",
    "new_process_pool",
    "new_thread_pool",
    "refuse_on_event_loop",
    "run_in_thread",
    "start_thread",
]

P = ParamSpec("P")
T = TypeVar("T")

# Short blocking jobs (tokenising a request, loading files). Small on purpose:
# these threads compete with the model's compute threads for the same cores.
OFFLOAD_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=OFFLOAD_THREADS, thread_name_prefix="embedloom-offload"
            )
        return _executor


async def run_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call on the shared worker threads, inside the caller's context."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_shared_executor(), call)


def refuse_on_event_loop(what: str) -> None:
    """Raise if called on a thread that is running an event loop.

    For the blocking calls that take long (a model's forward pass): on the loop's
    thread they stall every request the loop serves. asyncio's debug mode only
    reports a slow step after the fact, and only past a time threshold that a
    busy machine crosses by chance; this fails the first such call, every time.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what} blocks, and was called on the event loop's thread; "
        "hand it to embedloom.offload.run_in_thread"
    )


def start_thread(target: Callable[[], object], *, name: str) -> threading.Thread:
    """Start a long-lived thread that runs ``target`` inside a copy of the caller's context.

    Daemon threads: the owners (engine, embedder) join them on close; daemon only
    keeps a forgotten handle from blocking interpreter exit.
    """
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


class _ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run inside a copy of the submitter's context."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)


def new_thread_pool(workers: int, *, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for the caller to own and shut down; each task
    runs in a copy of its submitter's context."""
    return _ContextThreadPool(max_workers=workers, thread_name_prefix=name)


def new_process_pool(
    workers: int,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started with ``spawn``: a fork after torch
    (and its OpenMP pool) is loaded is not safe, and spawn also keeps the parent's
    threads out of the children. The one place embedloom starts processes."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


def iterate_in_thread(
    gen_fn: Callable[..., Iterator[T]],
    /,
    *args: Any,
    max_buffer: int = 16,
    executor: Executor | None = None,
) -> ThreadIterator[T]:
    """Run the blocking generator ``gen_fn(*args)`` in a thread, inside a copy of the
    caller's context, and iterate its items asynchronously (see ``ThreadIterator``).

    Use it as ``async with iterate_in_thread(...) as items: async for item in items``
    so that leaving the block early stops the producer at once.
    """
    return ThreadIterator(
        functools.partial(gen_fn, *args), max_buffer=max_buffer, executor=executor
    )


_DONE = object()


class ThreadIterator(Generic[T]):
    """Items of a blocking generator running in a thread, as an async iterator.

    - Backpressure: the producer takes a slot before asking the generator for an
      item, and the consumer frees it when it takes the item, so the producer is
      never more than ``max_buffer`` items ahead.
    - Errors: an exception in the generator is raised in the consumer, with its
      original traceback (the producer's frames included).
    - Stopping: ``aclose()`` (or leaving ``async with``, or the consumer's task
      being cancelled while it waits) tells the producer to stop; it closes the
      generator (its ``finally`` blocks run) without asking for another item, and
      ``aclose`` returns once the thread is done with it. A blocking step already
      under way finishes first: a thread cannot be interrupted.
    - Threads: the caller's ``executor``, or a one-thread executor of its own,
      shut down when the producer ends.
    """

    def __init__(
        self,
        make_generator: Callable[[], Iterator[T]],
        *,
        max_buffer: int = 16,
        executor: Executor | None = None,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self._make_generator = make_generator
        self._slots = threading.Semaphore(max_buffer)
        self._stop = threading.Event()
        self._items: asyncio.Queue[object] | None = None
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._producer: Future[None] | None = None
        self._finished = False
        # A consumer that drops the iterator without closing it must not leave
        # the producer blocked on a slot for ever.
        weakref.finalize(self, _release, self._stop, self._slots)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        items = self._start()
        try:
            item = await items.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if item is _DONE:
            self._finished = True
            await self._join()
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finished = True
            await self._join()
            raise item.error
        self._slots.release()
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        self._finished = True
        _release(self._stop, self._slots)
        await self._join()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _start(self) -> asyncio.Queue[object]:
        if self._items is None:
            loop = asyncio.get_running_loop()
            self._items = asyncio.Queue()
            executor = self._executor
            if executor is None:
                executor = self._own_executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="embedloom-stream"
                )
            context = contextvars.copy_context()
            produce = functools.partial(self._produce, loop, self._items)
            self._producer = executor.submit(context.run, produce)
        return self._items

    def _produce(self, loop: asyncio.AbstractEventLoop, items: asyncio.Queue[object]) -> None:
        def deliver(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening
                self._stop.set()

        try:
            generator = self._make_generator()
        except BaseException as exc:
            deliver(_Failure(exc))
            return
        try:
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(generator)
                except StopIteration:
                    deliver(_DONE)
                    return
                except BaseException as exc:
                    deliver(_Failure(exc))
                    return
                deliver(item)
        finally:
            close = getattr(generator, "close", None)
            if close is not None:
                close()

    async def _join(self) -> None:
        producer = self._producer
        if producer is not None:
            await asyncio.shield(asyncio.wrap_future(producer))
        if self._own_executor is not None:
            # The producer is done, so its thread is idle: joining it is immediate,
            # and the caller can count on no thread left behind.
            self._own_executor.shutdown(wait=True)
            self._own_executor = None


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _release(stop: threading.Event, slots: threading.Semaphore) -> None:
    stop.set()
    slots.release()  # wakes a producer waiting for a slot, so it sees the stop
