"""Rerank pairs per second: ``embedloom serve`` under 32 concurrent rerank clients
against ``CrossEncoder.predict`` at its best batch size, on the same pairs, in one run.

    .venv/bin/python benchmarks/rerank.py --duration 15 --rounds 3   # ~8 min

The model is the packaged MiniLM encoder with a new one-output head of random
weights (``tests.helpers.build_cross_encoder``): the shape, and so the speed, of a
MiniLM cross-encoder such as ms-marco-MiniLM-L-6-v2; its scores mean nothing.
Each request is a query and 20 documents (generated sentences, 30 tokens on
average), so a pair is about 60 tokens.

Phases, taking turns in each of ``--rounds`` rounds (the report takes the median),
so that they are compared seconds apart on this noisy shared machine:

- ``predict``: ``CrossEncoder.predict`` in this process (torch, all cores) over
  the pairs of 64 requests, at batch sizes 16, 32, 64 and 128; the best counts.
- ``server fp32``: ``embedloom serve --backend torch --dtype fp32`` (the same
  arithmetic as predict), 32 closed-loop clients posting ``/v1/rerank``.
- ``server auto``: ``embedloom serve`` as it starts by default: the variant its
  trial picks (bf16 where the CPU has bf16 units and it passes the score gate).

Both servers run for the whole benchmark and sit idle while the others are
measured. Writes ``results/rerank.md`` and a JSON file of every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from embedloom.bench.http import Connection, Endpoint  # noqa: E402
from embedloom.cpu import cpu_model  # noqa: E402
from run import _free_port, _wait_healthy, serve_command  # noqa: E402
from workload import sentences  # noqa: E402

DOCUMENTS_PER_REQUEST = 20
CLIENTS = 32
BATCH_SIZES = (16, 32, 64, 128)
TEXTS = sentences(4096, seed=29)


def request(index: int) -> tuple[str, list[str]]:
    """The ``index``-th request's query and documents (the same in every phase)."""
    start = (index * (DOCUMENTS_PER_REQUEST + 1)) % (len(TEXTS) - DOCUMENTS_PER_REQUEST - 1)
    return TEXTS[start], TEXTS[start + 1 : start + 1 + DOCUMENTS_PER_REQUEST]


def phase_predict(model: Any, requests: int = 64) -> dict[str, Any]:
    pairs = [(q, d) for i in range(requests) for q, docs in [request(i)] for d in docs]
    by_batch = {}
    for batch_size in BATCH_SIZES:
        started = time.perf_counter()
        model.predict(pairs, batch_size=batch_size)
        by_batch[batch_size] = round(len(pairs) / (time.perf_counter() - started), 1)
    best = max(by_batch, key=lambda b: by_batch[b])
    return {"pairs_per_s": by_batch[best], "best_batch_size": best, "by_batch_size": by_batch}


async def rerank_load(port: int, duration: float) -> dict[str, Any]:
    """32 closed-loop clients, each posting one request after another."""
    stop_at = time.perf_counter() + duration
    latencies: list[float] = []
    failures = 0
    pairs = 0

    async def client(index: int) -> None:
        nonlocal failures, pairs
        connection = Connection(Endpoint.parse(f"http://127.0.0.1:{port}"))
        sent = index
        while time.perf_counter() < stop_at:
            query, documents = request(sent)
            sent += CLIENTS
            body = {"model": "reranker", "query": query, "documents": documents}
            started = time.perf_counter()
            answer = await connection.request("POST", "/v1/rerank", json.dumps(body).encode())
            status = answer.status
            latencies.append(time.perf_counter() - started)
            if status == 200:
                pairs += len(documents)
            else:
                failures += 1
        await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "pairs_per_s": round(pairs / elapsed, 1),
        "requests": len(latencies),
        "failures": failures,
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
    }


def start_server(model_dir: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    command = serve_command(port, "--model", f"reranker={model_dir}", *flags)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDLOOM_HOME": str(HOME)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_healthy(port, process, limit=600)
    asyncio.run(rerank_load(port, 3.0))  # warm up connections and the allocator
    return process, port


def variant_of(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=10) as reply:
        info = json.loads(reply.read())
    [model] = info["models"]
    choice = model["backend_choice"]
    gate = choice["accuracy_gate"]
    figures = (
        f" (Spearman {gate['spearman']:.5f}, top-10 {gate['top_agreement']:.1%})" if gate else ""
    )
    return f"{choice['variant']}{figures}"


def median_round(rounds: list[dict[str, Any]], phase: str) -> float:
    return float(statistics.median(r[phase]["pairs_per_s"] for r in rounds))


def report(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    predict = median_round(rounds, "predict")
    best_batches = sorted({r["predict"]["best_batch_size"] for r in rounds})
    lines = [
        "# Rerank: embedloom serve vs CrossEncoder.predict",
        "",
        f"{results['date']} · {results['cpu']} · {results['cores']} cores · "
        f"{len(rounds)} rounds of {results['duration']} s, medians · "
        f"`benchmarks/rerank.py --duration {results['duration']} --rounds {len(rounds)}`",
        "",
        "The MiniLM encoder with a random one-output head (a MiniLM cross-encoder's "
        f"shape and speed); each request a query and {DOCUMENTS_PER_REQUEST} documents.",
        "",
        "| phase | pairs/s | × predict | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        f"| `CrossEncoder.predict`, best batch size ({', '.join(map(str, best_batches))}) "
        f"| {predict:.0f} | 1.00 | | |",
    ]
    for phase, label in (
        ("server_fp32", f"embedloom serve, {results['variants']['server_fp32']}, "
         f"{CLIENTS} clients"),
        ("server_auto", f"embedloom serve, auto → {results['variants']['server_auto']}, "
         f"{CLIENTS} clients"),
    ):  # fmt: skip
        pairs = median_round(rounds, phase)
        p50 = statistics.median(r[phase]["p50_ms"] for r in rounds)
        p99 = statistics.median(r[phase]["p99_ms"] for r in rounds)
        lines.append(f"| {label} | {pairs:.0f} | {pairs / predict:.2f} | {p50:.0f} | {p99:.0f} |")
    lines += [
        "",
        "predict by batch size (pairs/s, per round): "
        + "; ".join(
            ", ".join(f"{b}: {v:.0f}" for b, v in r["predict"]["by_batch_size"].items())
            for r in rounds
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder
    from tests.helpers import build_cross_encoder

    from embedloom.store import resolve_model

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_cross_encoder(
            resolve_model("all-MiniLM-L6-v2").path, Path(scratch) / "reranker"
        )
        model = CrossEncoder(str(model_dir), device="cpu")
        torch.set_num_threads(os.cpu_count() or 1)
        servers = {
            "server_fp32": start_server(model_dir, "--backend", "torch", "--dtype", "fp32"),
            "server_auto": start_server(model_dir),
        }
        try:
            phases: dict[str, Callable[[], dict[str, Any]]] = {
                "predict": lambda: phase_predict(model),
                **{
                    name: lambda port=port: asyncio.run(rerank_load(port, args.duration))
                    for name, (_, port) in servers.items()
                },
            }
            rounds = []
            for index in range(args.rounds):
                round_ = {name: run() for name, run in phases.items()}
                print(f"round {index + 1}: {json.dumps(round_)}", flush=True)
                rounds.append(round_)
            variants = {name: variant_of(port) for name, (_, port) in servers.items()}
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    now = datetime.now(UTC)
    results = {
        "date": now.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "duration": args.duration,
        "variants": variants,
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"rerank-{stamp}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "rerank.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
