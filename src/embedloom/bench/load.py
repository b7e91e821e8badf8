"""One step of load: a closed loop (N clients, each sending its next request when
the last is answered) or an open loop (requests started at a rate, answered or
not), timed from the client's side."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from embedloom.bench.api import Api
from embedloom.bench.http import Connection, Endpoint
from embedloom.bench.workload import Workload

__all__ = ["CONNECTION_FAILED", "LoadPlan", "Sample", "Step", "run_step"]

# The status a sample gets when no answer came (refused, reset, cut short).
CONNECTION_FAILED = 599
# The open loop's most connections at once: past it a request waits for one, and
# its latency still counts from when it was due (no coordinated omission).
_MAX_OPEN_CONNECTIONS = 512


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # seconds from the start of the measured window (when it was due)
    seconds: float  # from due to answered
    status: int
    inputs: int
    tokens: int | None


@dataclass(frozen=True, slots=True)
class LoadPlan:
    mode: Literal["closed", "open"]
    level: float  # clients (closed) or requests per second (open)
    duration: float | None  # seconds measured, or
    requests: int | None  # requests measured
    warmup: float  # seconds sent and not measured first


@dataclass(slots=True)
class Step:
    url: str
    server: str  # the endpoint's label, else its URL
    api: str
    plan: LoadPlan
    seconds: float = 0.0  # the measured window
    client_cpu_seconds: float = 0.0  # this process's CPU in that window
    samples: list[Sample] = field(default_factory=list)


Progress = Callable[[int, int, float], None]  # answered, failed, seconds so far


class _Window:
    """When measuring starts and stops, and whether to send one more request."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        now = time.perf_counter()
        self.measure_from = now + plan.warmup
        self.stop_at = now + plan.warmup + plan.duration if plan.duration else float("inf")
        self.issued = 0  # requests started inside the window

    def admit(self, at: float) -> bool:
        """Whether a request due at ``at`` should be sent (counting it if measured)."""
        if at >= self.stop_at:
            return False
        if at < self.measure_from:
            return True
        if self.plan.requests is not None and self.issued >= self.plan.requests:
            return False
        self.issued += 1
        return True


async def run_step(
    endpoint: Endpoint,
    api: Api,
    workload: Workload,
    plan: LoadPlan,
    headers: dict[str, str],
    progress: Progress | None = None,
) -> Step:
    url = f"{endpoint.base()}{api.path}"
    step = Step(url, endpoint.label or url, api.name, plan)
    window = _Window(plan)
    cpu_at_start: list[float] = []

    async def send(connection: Connection, texts: list[str], due: float) -> None:
        try:
            answer = await connection.request("POST", api.path, api.body(texts))
            status, tokens = answer.status, api.tokens(answer.body, answer.headers)
        except ConnectionError:
            status, tokens = CONNECTION_FAILED, None
        if due >= window.measure_from:
            if not cpu_at_start:
                cpu_at_start.append(time.process_time())
            step.samples.append(
                Sample(
                    due - window.measure_from,
                    time.perf_counter() - due,
                    status,
                    len(texts),
                    tokens if status == 200 else None,
                )
            )

    reporter = asyncio.ensure_future(_report(step, window, progress)) if progress else None
    try:
        if plan.mode == "closed":
            await _closed(endpoint, workload, int(plan.level), headers, window, send)
        else:
            await _open(endpoint, workload, plan.level, headers, window, send)
    finally:
        if reporter is not None:
            reporter.cancel()
    finished = time.perf_counter()
    step.seconds = max(1e-9, min(finished, window.stop_at) - window.measure_from)
    step.client_cpu_seconds = time.process_time() - (cpu_at_start or [time.process_time()])[0]
    return step


async def _closed(
    endpoint: Endpoint,
    workload: Workload,
    clients: int,
    headers: dict[str, str],
    window: _Window,
    send: Callable[..., object],
) -> None:
    async def client(index: int) -> None:
        connection = Connection(endpoint, headers)
        requests = workload.requests(index)
        try:
            while window.admit(due := time.perf_counter()):
                await send(connection, next(requests), due)  # type: ignore[misc]
        finally:
            await connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))


async def _open(
    endpoint: Endpoint,
    workload: Workload,
    rate: float,
    headers: dict[str, str],
    window: _Window,
    send: Callable[..., object],
) -> None:
    idle: list[Connection] = []
    opened = asyncio.Semaphore(_MAX_OPEN_CONNECTIONS)
    requests = workload.requests()
    arrivals = random.Random(13)  # Poisson arrivals, the same on every run
    in_flight: set[asyncio.Task[None]] = set()

    async def one(texts: list[str], due: float) -> None:
        async with opened:
            connection = idle.pop() if idle else Connection(endpoint, headers)
            try:
                await send(connection, texts, due)  # type: ignore[misc]
            finally:
                idle.append(connection)

    due = time.perf_counter()
    while window.admit(due):
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(next(requests), due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        due += arrivals.expovariate(rate)
    await asyncio.gather(*in_flight)
    for connection in idle:
        await connection.close()


async def _report(step: Step, window: _Window, progress: Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        failed = sum(1 for s in step.samples if s.status != 200)
        progress(len(step.samples) - failed, failed, time.perf_counter() - window.measure_from)
