"""``Embedder``: the synchronous, thread-safe face of the engine, for scripts.

It runs an ``Engine`` on an event loop of its own thread, so any number of
caller threads can share one model and have their inputs batched together.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, Self, TypeVar, overload

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import SparseVector
from embedloom.config import Settings
from embedloom.engine import Engine, EngineStatistics, ModelInfo
from embedloom.offload import start_thread

__all__ = ["Embedder"]

T = TypeVar("T")

# Large calls are split into chunks so one call never exceeds the admission
# bound; this many chunks (of all callers together) are in the engine at once.
_CHUNKS_IN_FLIGHT = 4


class Embedder:
    """``Embedder().embed(["a text", ...])`` → float32 array of shape (n, dimensions).

    Long inputs are truncated to the model's maximum by default, as
    sentence-transformers does. Close it (or use ``with``) to stop its thread.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        settings: Settings | None = None,
        batch_per_request: bool = False,
    ) -> None:
        """``batch_per_request``: each ``embed`` call's inputs are batched alone, so
        its vectors are reproducible bit for bit (see ``Engine``)."""
        settings = settings or Settings.from_environment()
        if model is not None:
            settings = settings.replace(model=model)
        # Its callers block for one of a few chunk slots instead of being refused:
        # a target wait is a server's policy, and admission here only a memory bound.
        settings = settings.replace(admission="count")
        self._engine = Engine.from_settings(settings, batch_per_request=batch_per_request)
        self._chunk = max(1, self._engine.admission_limit() // _CHUNKS_IN_FLIGHT)
        self._loop = asyncio.new_event_loop()
        self._thread = start_thread(self._loop.run_forever, name="embedloom-embedder-loop")
        self._closed = threading.Event()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, self._thread)
        self._slots = asyncio.Semaphore(_CHUNKS_IN_FLIGHT)
        try:
            self._call(self._engine.start())
        except BaseException:
            self._finalizer()
            raise

    @overload
    def embed(
        self,
        texts: str,
        *,
        normalize: bool | None = ...,
        truncate: bool = ...,
        dimensions: int | None = ...,
        prompt_name: str | None = ...,
        truncation_direction: Literal["right", "left"] = ...,
    ) -> npt.NDArray[np.float32]: ...

    @overload
    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = ...,
        truncate: bool = ...,
        dimensions: int | None = ...,
        prompt_name: str | None = ...,
        truncation_direction: Literal["right", "left"] = ...,
    ) -> npt.NDArray[np.float32]: ...

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        normalize: bool | None = None,
        truncate: bool = True,
        dimensions: int | None = None,
        prompt_name: str | None = None,
        truncation_direction: Literal["right", "left"] = "right",
    ) -> npt.NDArray[np.float32]:
        """Vectors for ``texts``: shape (n, d) for a list, (d,) for a single string.
        ``prompt_name``: one of the model's prompts before each text, as
        ``SentenceTransformer.encode(..., prompt_name=...)`` (see ``Engine.embed``)."""
        single = isinstance(texts, str)
        batch = [texts] if isinstance(texts, str) else list(texts)
        options = {
            "normalize": normalize,
            "truncate": truncate,
            "dimensions": dimensions,
            "prompt_name": prompt_name,
            "truncation_direction": truncation_direction,
        }
        vectors = self._call(self._embed_chunked(batch, **options))
        return vectors[0] if single else vectors

    def embed_sparse(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        prompt_name: str | None = None,
        truncation_direction: Literal["right", "left"] = "right",
    ) -> list[SparseVector]:
        """A sparse (SPLADE) model's vectors for ``texts``: the non-zero entries of
        each, as ``SparseEncoder.encode`` gives them (see ``Engine.embed_sparse``)."""
        options = {
            "truncate": truncate,
            "prompt_name": prompt_name,
            "truncation_direction": truncation_direction,
        }
        return self._call(self._sparse_chunked(list(texts), **options))

    @property
    def model_info(self) -> ModelInfo:
        return self._engine.model_info

    def statistics(self) -> EngineStatistics:
        return self._call(_return(self._engine.statistics))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._call(self._engine.close())
        finally:
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Embedder {self._engine!r}>"

    async def _embed_chunked(self, texts: list[str], **options: Any) -> npt.NDArray[np.float32]:
        chunks = [texts[i : i + self._chunk] for i in range(0, len(texts), self._chunk)] or [[]]

        async def one(chunk: list[str]) -> npt.NDArray[np.float32]:
            async with self._slots:
                return (await self._engine.embed(chunk, **options)).vectors

        parts = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _sparse_chunked(self, texts: list[str], **options: Any) -> list[SparseVector]:
        chunks = [texts[i : i + self._chunk] for i in range(0, len(texts), self._chunk)]

        async def one(chunk: list[str]) -> list[SparseVector]:
            async with self._slots:
                result = await self._engine.embed_sparse(chunk, **options)
                assert result.sparse is not None
                return result.sparse

        parts = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [vector for part in parts for vector in part]

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed.is_set() and not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("the embedder is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


async def _return(fn: Callable[[], T]) -> T:
    return fn()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
