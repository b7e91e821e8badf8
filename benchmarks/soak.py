"""Reliability under overload, over time and through SIGTERM, against a real server.

    .venv/bin/python benchmarks/soak.py            # ~14 minutes; its section of docs/reliability.md

Scenarios, each on a fresh ``embedloom serve`` (one process, default settings):

1. capacity: 32 closed-loop clients sending the mixed request sizes for
   ``--capacity-seconds``; its requests/s is "capacity" below.
2. overload: open-loop (Poisson) arrivals at 3× capacity for ``--overload-seconds``.
   Every request must get an answer (2xx, 429, 503 or 504; a connection error or a
   5xx other than 503 counts as an error); /health is probed every 50 ms on its own
   connection; RSS is sampled every second. When the load stops, closed-loop clients
   start at once and the time until a second of full throughput is reported.
3. soak: open-loop at 80% of capacity for ``--soak-seconds``: RSS slope, errors and
   p99 per minute.
4. SIGTERM: open-loop at capacity; SIGTERM after ``--sigterm-after`` seconds, arrivals
   continue until the server has exited. Every request written to the server must be
   answered (200, or 503 once draining); refused connections after the listener
   closed are counted apart, as they were never sent.

Mixed sizes: 70% of requests carry 1 sentence, 20% carry 8, 10% carry 64. Each
open-loop request uses its own connection (``Connection: close``), as independent
clients would. The load generator shares the 2 cores with the server: figures are
for this machine, and the ratios matter more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import write_section
from embedloom.bench.http import Connection, Endpoint
from workers import Server as WorkersServer
from workload import sentences

ROOT = Path(__file__).resolve().parent.parent
SIZES = ((1, 0.7), (8, 0.2), (64, 0.1))
ANSWERS = {200, 429, 503, 504}
TEXTS = sentences(4096)


class Server(WorkersServer):
    """One ``embedloom serve`` process (``workers.Server`` with one worker), and its RSS."""

    def __init__(self) -> None:
        super().__init__(workers=1, preload=False)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:  # type: ignore[override]
        """SIGTERM, wait; the exit code."""
        super().stop()
        return self.process.returncode


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    refused: int = 0  # could not connect: never sent
    lost: int = 0  # sent, and no answer came
    per_minute: dict[int, list[float]] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.lost + sum(n for s, n in self.statuses.items() if s not in ANSWERS)


def body_for(rng: random.Random) -> tuple[bytes, int]:
    size = rng.choices([s for s, _ in SIZES], [w for _, w in SIZES])[0]
    start = rng.randrange(len(TEXTS))
    texts = [TEXTS[(start + i) % len(TEXTS)] for i in range(size)]
    return json.dumps({"input": texts}).encode(), size


async def one_request(port: int, body: bytes, tally: Tally, began: float) -> None:
    connection = Connection(Endpoint.parse(f"http://127.0.0.1:{port}"))
    try:
        await connection.connect()
    except OSError:
        tally.refused += 1
        return
    started = time.perf_counter()
    tally.sent += 1
    try:
        status = (await connection.request("POST", "/v1/embeddings", body, close=True)).status
    except ConnectionError:
        tally.lost += 1
        return
    finally:
        await connection.close()
    latency = time.perf_counter() - started
    tally.statuses[status] += 1
    if status == 200:
        tally.latencies.append(latency)
        tally.per_minute.setdefault(int((started - began) // 60), []).append(latency)


async def open_loop(
    port: int,
    rate: float,
    seconds: float,
    tally: Tally,
    *,
    seed: int,
    until: asyncio.Event | None = None,
) -> None:
    """Poisson arrivals at ``rate`` per second for ``seconds`` (or until ``until`` is set);
    waits for every request to finish."""
    rng = random.Random(seed)
    began = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    next_at = began
    while (until is None and time.perf_counter() - began < seconds) or (
        until is not None and not until.is_set()
    ):
        next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        body, _ = body_for(rng)
        task = asyncio.create_task(one_request(port, body, tally, began))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def closed_loop(
    port: int, clients: int, seconds: float, *, seed: int
) -> list[tuple[float, int]]:
    """(finish time, sentences) of each 200, from ``clients`` back-to-back clients."""
    done: list[tuple[float, int]] = []
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        rng = random.Random(seed + index)
        connection = Connection(Endpoint.parse(f"http://127.0.0.1:{port}"))
        while time.perf_counter() < stop_at:
            body, size = body_for(rng)
            try:
                status = (await connection.request("POST", "/v1/embeddings", body)).status
            except ConnectionError:
                await connection.close()
                continue
            if status == 200:
                done.append((time.perf_counter(), size))
        await connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


async def probe_health(port: int, stop: asyncio.Event) -> list[float]:
    latencies = []
    connection = Connection(Endpoint.parse(f"http://127.0.0.1:{port}"))
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status = (await connection.request("GET", "/health")).status
        except ConnectionError:
            await connection.close()
            status = 599
        latencies.append(time.perf_counter() - started if status == 200 else float("inf"))
        await asyncio.sleep(0.05)
    await connection.close()
    return latencies


async def sample_rss(server: Server, stop: asyncio.Event) -> list[tuple[float, float]]:
    samples = []
    began = time.perf_counter()
    while not stop.is_set():
        if server.process.poll() is not None:
            break
        samples.append((time.perf_counter() - began, server.rss_mb()))
        await asyncio.sleep(1.0)
    return samples


def slope_mb_per_min(samples: list[tuple[float, float]], *, after: float = 0.0) -> float:
    """Least-squares RSS growth, from ``after`` seconds on (the allocator grows to its
    working size in the first minute; a leak keeps growing after it)."""
    samples = [s for s in samples if s[0] >= after]
    if len(samples) < 3:
        return 0.0
    xs, ys = [s[0] / 60 for s in samples], [s[1] for s in samples]
    return statistics.linear_regression(xs, ys).slope


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return "never" if value == float("inf") else f"{value * 1000:.0f}"


async def capacity(port: int, seconds: float) -> dict[str, float]:
    done = await closed_loop(port, 32, seconds, seed=1)
    return {
        "requests_per_s": len(done) / seconds,
        "sentences_per_s": sum(size for _, size in done) / seconds,
    }


async def scenario_overload(args: argparse.Namespace) -> dict[str, Any]:
    server = Server()
    try:
        await closed_loop(server.port, 8, 5, seed=99)  # warm-up
        full = await capacity(server.port, args.capacity_seconds)
        tally, stop = Tally(), asyncio.Event()
        health = asyncio.create_task(probe_health(server.port, stop))
        rss = asyncio.create_task(sample_rss(server, stop))
        await open_loop(
            server.port, 3 * full["requests_per_s"], args.overload_seconds, tally, seed=2
        )
        # Arrivals stopped and every request has its answer: how soon is throughput full?
        load_over = time.perf_counter()
        after = await closed_loop(server.port, 32, 10, seed=3)
        stop.set()
        health_latencies, rss_samples = await health, await rss
        recovered = _seconds_to_full(after, load_over, full["sentences_per_s"])
    finally:
        exit_code = server.stop()
    return {
        "capacity": full,
        "offered_requests_per_s": 3 * full["requests_per_s"],
        "tally": tally,
        "health_p99": percentile(health_latencies, 0.99),
        "health_max": max(health_latencies, default=None),
        "rss_slope": slope_mb_per_min(rss_samples),
        "rss_range": (min(r for _, r in rss_samples), max(r for _, r in rss_samples)),
        "recovered_seconds": recovered,
        "exit_code": exit_code,
    }


def _seconds_to_full(done: list[tuple[float, int]], since: float, full: float) -> float | None:
    """Seconds after ``since`` until the first one-second window at ≥ 90% of ``full``."""
    for start in range(10):
        window = [size for at, size in done if since + start <= at < since + start + 1]
        if sum(window) >= 0.9 * full:
            return float(start)
    return None


async def scenario_soak(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    server = Server()
    try:
        await closed_loop(server.port, 8, 5, seed=99)
        tally, stop = Tally(), asyncio.Event()
        health = asyncio.create_task(probe_health(server.port, stop))
        rss = asyncio.create_task(sample_rss(server, stop))
        await open_loop(server.port, rate, args.soak_seconds, tally, seed=4)
        stop.set()
        health_latencies, rss_samples = await health, await rss
    finally:
        exit_code = server.stop()
    minutes = {m: percentile(v, 0.99) for m, v in sorted(tally.per_minute.items())}
    return {
        "offered_requests_per_s": rate,
        "tally": tally,
        "health_p99": percentile(health_latencies, 0.99),
        "rss_slope": slope_mb_per_min(rss_samples),
        "rss_slope_after_warmup": slope_mb_per_min(rss_samples, after=60),
        "rss_range": (min(r for _, r in rss_samples), max(r for _, r in rss_samples)),
        "rss_last": rss_samples[-1][1],
        "p99_per_minute": minutes,
        "exit_code": exit_code,
    }


async def scenario_sigterm(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    server = Server()
    await closed_loop(server.port, 8, 5, seed=99)
    tally, exited = Tally(), asyncio.Event()

    async def terminate_later() -> float:
        await asyncio.sleep(args.sigterm_after)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        await asyncio.to_thread(server.process.wait)
        exited.set()
        return time.perf_counter() - signalled

    stopper = asyncio.create_task(terminate_later())
    await open_loop(server.port, rate, 0, tally, seed=5, until=exited)
    return {
        "offered_requests_per_s": rate,
        "tally": tally,
        "drain_seconds": await stopper,
        "exit_code": server.process.returncode,
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    over, soak, term = results["overload"], results["soak"], results["sigterm"]
    cap = over["capacity"]

    def row(name: str, load: str, r: dict[str, Any]) -> str:
        t: Tally = r["tally"]
        shed = t.statuses[429] + t.statuses[503] + t.statuses[504]
        slope = f"{r['rss_slope']:+.2f}" if "rss_slope" in r else "-"
        return (
            f"| {name} | {load} | {t.sent} | {t.answered} | {t.statuses[200]} | {shed} "
            f"({t.statuses[429]} / {t.statuses[503]} / {t.statuses[504]}) | {t.errors} | "
            f"{ms(percentile(t.latencies, 0.99))} | {ms(r.get('health_p99'))} | {slope} |"
        )

    lines = [
        "# Reliability: overload, soak and SIGTERM",
        "",
        f"`.venv/bin/python benchmarks/soak.py --overload-seconds {args.overload_seconds:g} "
        f"--soak-seconds {args.soak_seconds:g}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores; one `embedloom serve` process, default settings, "
        "a fresh server per scenario. Mixed requests: 70% × 1 sentence, 20% × 8, 10% × 64. "
        "The load generator runs on the same 2 cores.",
        "",
        f"Capacity (32 closed-loop clients, {args.capacity_seconds:g} s): "
        f"{cap['requests_per_s']:.1f} requests/s = {cap['sentences_per_s']:.1f} sentences/s.",
        "",
        "| scenario | load | sent | answered | 200 | shed (429 / 503 / 504) | errors | "
        "p99 of 200s (ms) | /health p99 (ms) | RSS slope (MB/min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row(
            "overload",
            f"3× capacity open-loop ({over['offered_requests_per_s']:.1f} req/s), "
            f"{args.overload_seconds:g} s",
            over,
        ),
        row(
            "soak",
            f"80% of capacity open-loop ({soak['offered_requests_per_s']:.1f} req/s), "
            f"{args.soak_seconds:g} s",
            soak,
        ),
        row(
            "SIGTERM under load",
            f"capacity open-loop ({term['offered_requests_per_s']:.1f} req/s), "
            f"SIGTERM after {args.sigterm_after:g} s",
            term,
        ),
        "",
        "- errors = sent requests with no answer, or answered with a 5xx other than 503/504.",
        f"- overload: /health max {ms(over['health_max'])} ms; RSS "
        f"{over['rss_range'][0]:.0f}–{over['rss_range'][1]:.0f} MB; after the load stopped "
        "(every request answered), full throughput (≥ 90% of capacity in a one-second "
        f"window) came back after {over['recovered_seconds']} s.",
        f"- soak: RSS {soak['rss_range'][0]:.0f}–{soak['rss_range'][1]:.0f} MB, "
        f"{soak['rss_last']:.0f} MB at the end; slope after the first minute "
        f"{soak['rss_slope_after_warmup']:+.2f} MB/min; p99 of 200s "
        "per minute (ms): " + ", ".join(ms(v) for v in soak["p99_per_minute"].values()) + ".",
        f"- SIGTERM: the server exited {term['exit_code']} after {term['drain_seconds']:.1f} s; "
        f"sent {term['tally'].sent}, answered {term['tally'].answered}, lost "
        f"{term['tally'].lost}; {term['tally'].refused} arrivals after the listener closed "
        "were refused at connect (never sent).",
        "",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    overload = await scenario_overload(args)
    rate = overload["capacity"]["requests_per_s"]
    soak = await scenario_soak(args, 0.8 * rate)
    sigterm = await scenario_sigterm(args, rate)
    return {"overload": overload, "soak": soak, "sigterm": sigterm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--overload-seconds", type=float, default=60)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--sigterm-after", type=float, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    text = report(results, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.output, text)  # benchmarks/latency.py writes another section
    print(text)


if __name__ == "__main__":
    main()
