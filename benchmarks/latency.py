"""Latency under load: admission by predicted wait with fair scheduling, against the
count bound with arrival order, on the mixed workload — measured by ``embedloom bench``'s
load generator in this process, the servers in their own.

    .venv/bin/python benchmarks/latency.py [--rounds 2] [--duration 20]

Two ``embedloom serve`` processes on the benchmarks' store (``auto``), the same
key file (tenants ``quiet`` and ``flood``, weight 1 each):

- **before**: ``--admission count --scheduling fifo`` (the 2,048-input bound, arrival order);
- **now**: the defaults (``--admission wait --max-queue-wait 0.5 --scheduling fair``);
- **now, 2 s**: the same with ``--max-queue-wait 2``, the knob between latency and goodput.

In each round (the machine's speed drifts ±20%, so the rounds interleave the
servers and re-measure capacity): capacity = requests/s of 32 closed-loop
clients on the mixed workload (70% × 1, 20% × 8, 10% × 64 sentences), measured
on **before**, which refuses none of their requests (the rate of the whole mix,
not of the part another policy admits); then on each server, Poisson arrivals
at 50%, 80%, 95% and 300% of that rate; then two tenants: ``quiet`` at 40% of
capacity alone, and again while ``flood`` sends 150% (three times its fair half).

Per step and request size: p50/p99 latency of the answered (200) requests,
the share refused (429) and how fast refusals came back, goodput (inputs of
200s per second ÷ capacity in inputs per second). Writes
``benchmarks/results/latency.{md,json}`` and its section of ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"
DOC = HERE.parent / "docs" / "reliability.md"

sys.path.insert(0, str(HERE))
from backends import _cpu  # noqa: E402
from doc_sections import write_section  # noqa: E402
from embedloom.bench.api import Api  # noqa: E402
from embedloom.bench.http import Endpoint  # noqa: E402
from embedloom.bench.load import LoadPlan, Sample, run_step  # noqa: E402
from embedloom.bench.workload import RequestMix, Workload, generated_sentences  # noqa: E402
from run import _free_port, _wait_healthy, serve_command  # noqa: E402

POLICIES = {
    "before": ("--admission", "count", "--scheduling", "fifo"),
    "now": (),
    "now, 2 s": ("--max-queue-wait", "2"),
}
LEVELS = (0.5, 0.8, 0.95, 3.0)
SIZES = (1, 8, 64)
MIX = RequestMix.parse("1:70,8:20,64:10")
KEYS = {"quiet": "quiet-benchmark-key", "flood": "flood-benchmark-key"}
TEI = Api("tei", "/embed")


@contextmanager
def servers(home: Path) -> Iterator[dict[str, Endpoint]]:
    with ExitStack() as stack:
        keys = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "keys"
        keys.write_text("".join(f"{name} 1 {key}\n" for name, key in KEYS.items()))
        endpoints = {}
        for name, flags in POLICIES.items():
            port = _free_port()
            command = serve_command(port, "--api-key-file", str(keys), *flags)
            process = subprocess.Popen(
                command,
                env={**os.environ, "EMBEDLOOM_HOME": str(home), "HF_HUB_OFFLINE": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(process.wait, 60)
            stack.callback(process.terminate)
            _wait_healthy(port, process, limit=600)
            label = name.replace(", ", "-").replace(" ", "")
            endpoints[name] = Endpoint.parse(f"{label}=http://127.0.0.1:{port}/embed")
        yield endpoints


def headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


async def load(
    endpoint: Endpoint, workload: Workload, mode: str, level: float, seconds: float, tenant: str
) -> list[Sample]:
    plan = LoadPlan(mode, level, seconds, None, warmup=2.0)  # type: ignore[arg-type]
    step = await run_step(endpoint, TEI, workload, plan, headers(tenant))
    return step.samples


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(samples: list[Sample], seconds: float, capacity_inputs: float) -> dict[str, Any]:
    answered = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status == 429]
    other = [s for s in samples if s.status not in (200, 429)]
    by_size = {}
    for size in SIZES:
        sized = [s for s in samples if s.inputs == size]
        ok = [s.seconds for s in sized if s.status == 200]
        by_size[size] = {
            "requests": len(sized),
            "p50": percentile(ok, 0.5),
            "p99": percentile(ok, 0.99),
            "refused": sum(s.status == 429 for s in sized) / max(1, len(sized)),
        }
    goodput = sum(s.inputs for s in answered) / seconds
    return {
        "requests": len(samples),
        "by_size": by_size,
        "p99": percentile([s.seconds for s in answered], 0.99),
        "refused": len(refused) / max(1, len(samples)),
        "refusal_p99": percentile([s.seconds for s in refused], 0.99),
        "errors": len(other),
        "error_statuses": {str(k): v for k, v in Counter(s.status for s in other).items()},
        "goodput": goodput / capacity_inputs,
    }


async def one_round(
    endpoints: dict[str, Endpoint], workload: Workload, seconds: float
) -> dict[str, Any]:
    # Against the count bound, which refuses none of 32 clients' requests: the
    # requests/s of the whole mix, not of the share another policy admits.
    probe = await load(endpoints["before"], workload, "closed", 32, 10.0, "quiet")
    done = [s for s in probe if s.status == 200]
    capacity = len(done) / 10.0
    capacity_inputs = sum(s.inputs for s in done) / 10.0
    print(f"capacity {capacity:.1f} requests/s, {capacity_inputs:.0f} inputs/s", flush=True)
    result: dict[str, Any] = {"capacity": capacity, "capacity_inputs": capacity_inputs}
    for name, endpoint in endpoints.items():
        steps = {}
        for level in LEVELS:
            samples = await load(endpoint, workload, "open", level * capacity, seconds, "quiet")
            steps[str(level)] = summary(samples, seconds, capacity_inputs)
            print(name, level, json.dumps(steps[str(level)]), flush=True)
        alone = await load(endpoint, workload, "open", 0.4 * capacity, seconds, "quiet")
        quiet, flood = await asyncio.gather(
            load(endpoint, workload, "open", 0.4 * capacity, seconds, "quiet"),
            load(endpoint, workload, "open", 1.5 * capacity, seconds, "flood"),
        )
        steps["tenants"] = {
            "quiet_alone": summary(alone, seconds, capacity_inputs),
            "quiet_flooded": summary(quiet, seconds, capacity_inputs),
            "flood": summary(flood, seconds, capacity_inputs),
        }
        print(name, "tenants", json.dumps(steps["tenants"]), flush=True)
        result[name] = steps
    return result


def mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:,.0f}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def markdown(rounds: list[dict[str, Any]], command: str) -> str:
    stamp = time.strftime("%Y-%m-%d")
    lines = [
        "# Latency under load",
        "",
        "Admission by predicted wait with the fair order (now) against the count bound with "
        "arrival order (before), on the mixed workload.",
        "",
        f"{stamp}, {_cpu()}, {os.cpu_count()} cores; "
        f"`{command}`; capacity per round: "
        + ", ".join(
            f"{r['capacity']:.1f} req/s ({r['capacity_inputs']:.0f} inputs/s)" for r in rounds
        )
        + ". Figures are means over the rounds (p99 of each round's samples, then averaged).",
        "",
        "| load | policy | p50 / p99 ms, 1 input | p50 / p99 ms, 8 | p50 / p99 ms, 64 "
        "| refused | refusal p99 ms | goodput ÷ capacity | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in LEVELS:
        for policy in POLICIES:
            steps = [r[policy][str(level)] for r in rounds]
            cells = []
            for size in SIZES:
                p50 = mean([s["by_size"][size]["p50"] for s in steps])
                p99 = mean([s["by_size"][size]["p99"] for s in steps])
                cells.append(f"{ms(p50)} / {ms(p99)}")
            lines.append(
                f"| {level:.0%} | {policy} | {' | '.join(cells)} "
                f"| {pct(mean([s['refused'] for s in steps]))} "
                f"| {ms(mean([s['refusal_p99'] for s in steps]))} "
                f"| {mean([s['goodput'] for s in steps]):.2f} "
                f"| {sum(s['errors'] for s in steps)} |"
            )
    lines += [
        "",
        "Two tenants of weight 1: `quiet` at 40% of capacity, alone and while `flood` sends "
        "150% (three times its half):",
        "",
        "| policy | quiet p99 alone ms | quiet p99 flooded ms | ratio | quiet refused "
        "(flooded) | flood refused | flood goodput ÷ capacity |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy in POLICIES:
        tenants = [r[policy]["tenants"] for r in rounds]
        alone = mean([t["quiet_alone"]["p99"] for t in tenants])
        flooded = mean([t["quiet_flooded"]["p99"] for t in tenants])
        ratio = f"{flooded / alone:.1f}×" if alone and flooded else "–"
        lines.append(
            f"| {policy} | {ms(alone)} | {ms(flooded)} | {ratio} "
            f"| {pct(mean([t['quiet_flooded']['refused'] for t in tenants]))} "
            f"| {pct(mean([t['flood']['refused'] for t in tenants]))} "
            f"| {mean([t['flood']['goodput'] for t in tenants]):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    args = parser.parse_args()
    workload = Workload(generated_sentences(4096), MIX)
    rounds = []
    with servers(HOME) as endpoints:
        for index in range(args.rounds):
            print(f"round {index + 1}", flush=True)
            rounds.append(asyncio.run(one_round(endpoints, workload, args.duration)))
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps({"command": command, "rounds": rounds}))
    text = markdown(rounds, command.strip())
    (RESULTS / "latency.md").write_text(text)
    write_section(DOC, text)
    print(text)


if __name__ == "__main__":
    main()
