"""A real server under overload and under SIGTERM: shed, drain, never hang."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, long_text, metric_value

pytestmark = pytest.mark.model


async def test_overload_burst_is_shed_with_429_while_health_answers() -> None:
    server = await asyncio.to_thread(ServerProcess.start, "--max-queued-inputs", "4")
    with server:
        heavy = [long_text(150 + i) for i in range(4)]  # fills the admission bound alone
        limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            burst_over = asyncio.Event()

            async def probe_health() -> list[int]:
                codes = []
                while not burst_over.is_set():
                    codes.append((await client.get("/health")).status_code)
                return codes

            prober = asyncio.create_task(probe_health())
            replies = await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": heavy}) for _ in range(60))
            )
            burst_over.set()
            health_codes = await prober
        assert await asyncio.to_thread(server.terminate) == 0

    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 429}, statuses
    for reply in replies:
        if reply.status_code == 429:
            assert int(reply.headers["retry-after"]) >= 1
            assert reply.json()["error"]["type"] == "rate_limit_error"
    assert health_codes, "health was probed during the burst"
    assert set(health_codes) == {200}


async def test_sigterm_finishes_admitted_requests_refuses_new_ones_and_exits_0() -> None:
    server = await asyncio.to_thread(ServerProcess.start, "--log-level", "debug")
    with server:
        ids = [f"drain-{i}" for i in range(4)]
        work = [long_text(200 + i) for i in range(32)]  # seconds of model time each
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            requests = [
                asyncio.create_task(
                    client.post("/embed", json={"inputs": work}, headers={"x-request-id": rid})
                )
                for rid in ids
            ]
            admitted: set[str] = set()
            while admitted != set(ids):
                entry = await asyncio.to_thread(
                    server.wait_for_log,
                    lambda e: (
                        e.get("logger") == "embedloom.engine"
                        and str(e.get("message", "")).startswith("admitted")
                    ),
                )
                admitted.add(entry["request_id"])

            server.process.send_signal(signal.SIGTERM)
            draining = await asyncio.to_thread(
                server.wait_for_log, lambda e: str(e.get("message", "")).startswith("draining")
            )
            replies = await asyncio.gather(*requests)

            started = time.monotonic()
            try:
                late = await client.post("/embed", json={"inputs": "too late"})
            except httpx.TransportError:
                late = None  # the listening socket is already closed: refused, not hung
        exit_code = await asyncio.to_thread(server.process.wait, 120)

    assert "inputs still admitted" in draining["message"]
    assert not draining["message"].startswith("draining: 0 "), "work was still in flight"
    assert [r.status_code for r in replies] == [200] * len(ids)
    assert all(len(r.json()) == len(work) for r in replies)
    assert late is None or late.status_code == 503
    assert time.monotonic() - started < 30
    assert exit_code == 0


async def test_two_tenants_under_a_saturating_load_get_the_shares_their_weights_say(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("light 1 light-secret-key\nheavy 3 heavy-secret-key\n")
    # Shares, not admission: a long queue (no refusals) keeps both tenants backlogged.
    server = await asyncio.to_thread(
        ServerProcess.start, "--api-key-file", str(keys), "--max-queue-wait", "60"
    )
    texts = [f"sentence {i} about a river, a stone and the weather" for i in range(8)]
    answered = 0
    snapshots: list[str] = []
    with server:
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        metrics_key = {"Authorization": "Bearer light-secret-key"}
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            marks = iter((600, 2400))
            mark = next(marks)

            async def closed_loop(tenant: str) -> None:
                nonlocal answered, mark
                headers = {"Authorization": f"Bearer {tenant}-secret-key"}
                while len(snapshots) < 2:
                    reply = await client.post("/embed", json={"inputs": texts}, headers=headers)
                    assert reply.status_code == 200, reply.text
                    answered += len(texts)
                    if answered >= mark:
                        mark = next(marks, 10**9)
                        # Measured between two points where both are backlogged.
                        snapshots.append((await client.get("/metrics", headers=metrics_key)).text)

            # Many callers each, more than the batches in flight take: both tenants
            # always have work queued, so only the weights decide the order.
            await asyncio.gather(*(closed_loop(t) for t in ("light", "heavy") for _ in range(24)))
        assert await asyncio.to_thread(server.terminate) == 0

    def embedded(tenant: str, text: str) -> float:
        return metric_value(text, "embedloom_tenant_inputs_embedded_total", tenant=tenant)

    served = {t: embedded(t, snapshots[1]) - embedded(t, snapshots[0]) for t in ("light", "heavy")}
    # 3 : 1, counted by the engine: 24 of each batch of 32 for heavy, 8 for light.
    assert 2.5 <= served["heavy"] / served["light"] <= 3.5, served
    assert "secret" not in snapshots[1], "a key never appears in a metric"
