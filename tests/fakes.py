"""A fake backend for unit tests of the engine's scheduling (never for acceptance tests).

One token per character, so lengths are obvious; each vector encodes its text,
so a row delivered to the wrong request shows up at once. It can hold each
batch until the test lets it go, to make concurrency deterministic.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import PLAIN, ModelInput, TokenizedInput, TokenizeOptions, TokenPiece
from embedloom.config import Settings
from embedloom.engine import Engine
from embedloom.prompts import ModelPrompts
from embedloom.sharing import SharingPlan
from embedloom.sharing.slots import ComputeSlots

P = ParamSpec("P")
T = TypeVar("T")


PAIR_SEPARATOR = "\x1f"


class ThreadKiller(BaseException):
    """Not an ``Exception``: nothing on the inference thread catches it, so it ends the
    thread, as a crash in native code or a stray ``SystemExit`` would."""


class FakeBackend:
    name = "fake"
    dtype = "fp32"

    def __init__(
        self,
        *,
        max_input_tokens: int = 64,
        normalizes: bool = False,
        hold_batches: bool = False,
        fail_on: str | None = None,
        hang_on: str | None = None,
        die_on: str | None = None,
        kind: str = "embedding",
    ) -> None:
        """``kind``: ``cross-encoder`` scores pairs (each pair read as the text
        ``query + PAIR_SEPARATOR + document``; its score is that text's signature's
        first component) instead of embedding.
        ``fail_on``: a batch holding this text raises (a poisoned input).
        ``hang_on``: a batch holding it blocks until ``unhang()``. ``die_on``: a batch
        holding it raises ``ThreadKiller``, which ends the inference thread."""
        self.max_input_tokens = max_input_tokens
        self.kind = kind
        self.tasks: tuple[str, ...] = ("score",) if kind == "cross-encoder" else ("embed", "tokens")
        self.dimensions = 1 if kind == "cross-encoder" else 4
        self.normalizes = normalizes
        self.batches: list[list[str]] = []
        self.entered: queue.Queue[list[str]] = queue.Queue()
        self._hold = hold_batches
        self._go: queue.Queue[None] = queue.Queue()
        self._fail_on = fail_on
        self._hang_on = hang_on
        self._die_on = die_on
        self._unhung = threading.Event()
        self._lock = threading.Lock()
        self.on_tokenize: Callable[[Sequence[str]], None] | None = None
        self.running = 0  # embed calls in progress now
        self.most_running = 0  # the most ever in progress at once

    def compute_threads(self) -> int:
        return 1

    vocab_size = 0x110000  # one token per code point

    def tokenize(
        self, inputs: Sequence[ModelInput], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        if self.on_tokenize is not None:
            self.on_tokenize(inputs)
        out = []
        for item in inputs:
            text = options.prompt + item if isinstance(item, str) else decode_ids(item)
            ids = tuple(ord(c) for c in text)
            kept = ids[-self.max_input_tokens :] if options.left else ids[: self.max_input_tokens]
            out.append(
                TokenizedInput(
                    input_ids=kept,
                    token_type_ids=None,
                    truncated=len(ids) > self.max_input_tokens,
                )
            )
        return out

    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str]], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        return self.tokenize([query + PAIR_SEPARATOR + document for query, document in pairs])

    def score(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        return self.embed(batch)[:, :1]

    def embed_sparse(self, batch: Sequence[TokenizedInput]) -> list[Any]:
        raise NotImplementedError

    def pieces(self, text: str, *, prompt: str = "", special: bool = True) -> list[TokenPiece]:
        whole = prompt + text
        return [TokenPiece(ord(c), c, False, i, i + 1) for i, c in enumerate(whole)]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return decode_ids(ids)

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        texts = [decode(item) for item in batch]
        with self._lock:
            self.batches.append(texts)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.entered.put(texts)
            if self._hold:
                self._go.get()
            if self._fail_on is not None and self._fail_on in texts:
                raise RuntimeError(f"poisoned input {self._fail_on!r}")
            if self._hang_on is not None and self._hang_on in texts:
                self._unhung.wait()
            if self._die_on is not None and self._die_on in texts:
                raise ThreadKiller(f"input {self._die_on!r} ends the thread")
            return np.array([signature(text) for text in texts], dtype=np.float32)
        finally:
            with self._lock:
                self.running -= 1

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        """One row per token: its signature as a one-character text."""
        self.embed(batch)  # the same holds, failures and bookkeeping
        return [
            np.array([signature(chr(token)) for token in item.input_ids], dtype=np.float32)
            for item in batch
        ]

    @property
    def holds_batches(self) -> bool:
        return self._hold

    def unhang(self) -> None:
        """Let every batch blocked on ``hang_on`` return."""
        self._unhung.set()

    def release(self, batches: int = 1) -> None:
        """Let ``batches`` held batches finish."""
        for _ in range(batches):
            self._go.put(None)

    def wait_entered(self, timeout: float = 10) -> list[str]:
        """Block until the model starts a batch; its texts."""
        return self.entered.get(timeout=timeout)


def decode(item: TokenizedInput) -> str:
    return decode_ids(item.input_ids)


def decode_ids(ids: Sequence[int]) -> str:
    return "".join(chr(i) for i in ids)


def signature(text: str) -> list[float]:
    """The fake model's 'embedding' of a text: identifies it, and is never zero."""
    codes = [ord(c) for c in text] or [0]
    return [float(len(text)), float(sum(codes)), float(codes[0]), 1.0]


async def inline(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """An offload that runs the call at once on the loop: engine steps become deterministic."""
    return fn(*args, **kwargs)


class FakeClock:
    """The running loop's clock, moved by the test: deadlines, expiry timers, queue
    waits and ageing all read the loop's time, so this one clock drives them all."""

    def __init__(self) -> None:
        self.now = asyncio.get_running_loop().time()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running_engine(
    backend: FakeBackend,
    *,
    factory: Callable[[], FakeBackend] | None = None,
    clock: FakeClock | None = None,
    sharing: SharingPlan | None = None,
    slots: ComputeSlots | None = None,
    prompts: ModelPrompts | None = None,
    **settings: Any,
) -> AsyncIterator[Engine]:
    """An engine on ``backend`` (made by ``factory``, default: that one backend),
    tokenising inline, started with its warm-up batch run; with ``clock``, on a loop
    whose time is that clock. Whatever the test leaves held or hung is let go."""
    loop = asyncio.get_running_loop()
    slow_step = loop.slow_callback_duration
    if clock is not None:
        loop.time = clock  # type: ignore[method-assign]
        # The loop times its steps on its own clock: moving the clock inside a step
        # would read as a blocked loop. On a fake clock that check means nothing.
        loop.slow_callback_duration = math.inf
    engine = Engine(
        factory or (lambda: backend),
        settings=Settings(**settings),
        offload=inline,
        sharing=sharing,
        slots=slots,
        prompts=prompts,
    )
    if backend.holds_batches:
        backend.release()  # the warm-up batch
    await engine.start()
    assert backend.wait_entered() in (["warm up"], ["warm up" + PAIR_SEPARATOR + "warm up"])
    backend.batches.clear()
    try:
        yield engine
    finally:
        if backend.holds_batches:
            backend.release(100)  # never leave an inference thread blocked
        backend.unhang()
        await engine.close(grace=5)
        if clock is not None:
            del loop.time  # type: ignore[method-assign]
            loop.slow_callback_duration = slow_step
