"""Two models served together against each alone, in one run.

    .venv/bin/python benchmarks/many_models.py --duration 8 --rounds 3   # ~8 min

The models: the packaged MiniLM ("mini": 6 layers × 384) and a 2-layer BERT of
width 64 with random weights ("tiny", ``tests.helpers.build_tiny_bert``): a heavy
and a light model, as a deployment would pair a big accurate embedder with a
small fast one. Three registries are loaded once in this process — mini alone,
tiny alone, both together — each with the whole thread budget, and take turns
phase by phase in ``--rounds`` rounds (the report takes the median), so the
configurations are compared seconds apart on this noisy shared machine:

- own load: 8 closed-loop callers × 8 sentences on one model, alone and together
  (the other model idle): does serving two cost the busy one anything?
- mixed load: 8 callers on each model at once, together: how the budget is shared.
- flood: 16 callers × 64 sentences on mini (refusals retried) while one caller
  sends 1-sentence requests to tiny, together; against tiny with the same caller
  alone: what a flood on the heavy model does to the light one's latency.

Writes ``results/many-models.md`` and a JSON file with every phase's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from embedloom import Overloaded, Registry, Settings  # noqa: E402
from embedloom.cpu import cpu_model  # noqa: E402
from workload import sentences  # noqa: E402

TEXTS = sentences(4096, seed=17)


async def closed_loop(
    registry: Registry, model: str, callers: int, size: int, until: float
) -> dict[str, Any]:
    """``callers`` callers, each sending ``size`` sentences at a time until ``until``;
    refusals (429) are counted and retried."""
    latencies: list[float] = []
    done = refused = 0
    loop = asyncio.get_running_loop()

    async def caller(index: int) -> None:
        nonlocal done, refused
        position = index * 97
        while loop.time() < until:
            batch = [TEXTS[(position + i) % len(TEXTS)] for i in range(size)]
            position += size
            started = loop.time()
            try:
                async with registry.use(model) as engine:
                    await engine.embed(batch, truncate=True)
            except Overloaded:
                refused += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(loop.time() - started)
            done += size

    started = loop.time()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    seconds = loop.time() - started
    ordered = sorted(latencies) or [0.0]
    return {
        "sentences_per_s": done / seconds,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "requests": len(latencies),
        "refused": refused,
    }


async def run(args: argparse.Namespace, tiny_dir: Path) -> dict[str, Any]:
    common: dict[str, Any] = {"backend": args.backend, "threads": args.threads, "offline": True}
    mini_ref, tiny_ref = "mini=all-MiniLM-L6-v2", f"tiny={tiny_dir}"
    registries = {
        "mini alone": Registry(Settings(model=(mini_ref,), **common)),
        "tiny alone": Registry(Settings(model=(tiny_ref,), **common)),
        "together": Registry(Settings(model=(mini_ref, tiny_ref), **common)),
    }
    for registry in registries.values():
        await registry.start()
    variants = {
        f"{name} ({where})": f"{engine.model_info.backend}/{engine.model_info.dtype}"
        for where, registry in registries.items()
        for name, engine in registry.engines()
    }
    loop = asyncio.get_running_loop()

    def phase(
        name: str, work: Callable[[float], Awaitable[dict[str, Any]]]
    ) -> Callable[[], Awaitable[tuple[str, dict[str, Any]]]]:
        async def go() -> tuple[str, dict[str, Any]]:
            print(f"  {name}", file=sys.stderr)
            return name, await work(loop.time() + args.duration)

        return go

    together, mini, tiny = (
        registries["together"],
        registries["mini alone"],
        registries["tiny alone"],
    )

    async def mixed(until: float) -> dict[str, Any]:
        a, b = await asyncio.gather(
            closed_loop(together, "mini", 8, 8, until), closed_loop(together, "tiny", 8, 8, until)
        )
        return {"mini": a, "tiny": b}

    async def flooded(until: float) -> dict[str, Any]:
        flood, light = await asyncio.gather(
            closed_loop(together, "mini", 16, 64, until), closed_loop(together, "tiny", 1, 1, until)
        )
        return {"mini": flood, "tiny": light}

    phases = [
        phase("own load: mini alone", lambda u: closed_loop(mini, "mini", 8, 8, u)),
        phase("own load: mini together", lambda u: closed_loop(together, "mini", 8, 8, u)),
        phase("own load: tiny alone", lambda u: closed_loop(tiny, "tiny", 8, 8, u)),
        phase("own load: tiny together", lambda u: closed_loop(together, "tiny", 8, 8, u)),
        phase("mixed load: together", mixed),
        phase("light caller: tiny alone", lambda u: closed_loop(tiny, "tiny", 1, 1, u)),
        phase("light caller: tiny while mini is flooded", flooded),
    ]
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}", file=sys.stderr)
            order = phases if round_index % 2 == 0 else phases[::-1]
            for go in order:
                name, figures = await go()
                raw.setdefault(name, []).append(figures)
    finally:
        slots = together.slots.statistics()
        for registry in registries.values():
            await registry.close()
    return {
        "raw": raw,
        "variants": variants,
        "slots_together": {
            "peak_held": slots.peak_held,
            "budget": slots.budget,
            "waited": slots.waited,
            "grants": slots.grants,
        },
    }


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(results: dict[str, Any]) -> str:
    raw = results["raw"]
    m = lambda phase, *path: _median(raw[phase], *path)  # noqa: E731
    own = [
        (
            "mini",
            m("own load: mini alone", "sentences_per_s"),
            m("own load: mini together", "sentences_per_s"),
        ),
        (
            "tiny",
            m("own load: tiny alone", "sentences_per_s"),
            m("own load: tiny together", "sentences_per_s"),
        ),
    ]
    slots = results["slots_together"]
    lines = [
        f"Measured {results['when']} on {results['machine']}; backend {results['backend']}, "
        f"thread budget {results['threads'] or 'all cores'}; {results['duration_s']:.0f} s per "
        f"phase, median of {results['rounds']} rounds, phases interleaved. Command: "
        f"`{results['command']}`."
        + (
            " Variants: " + ", ".join(f"{k} {v}" for k, v in results["variants"].items()) + "."
            if results.get("variants")
            else ""
        ),
        "",
        "**Own load** (8 callers × 8 sentences on one model; in *together* the other model is "
        "loaded and idle):",
        "",
        "| model | alone, sentences/s | together, sentences/s | together ÷ alone |",
        "|---|---:|---:|---:|",
    ]
    for name, alone, both in own:
        lines.append(f"| {name} | {alone:.0f} | {both:.0f} | {both / alone:.2f} |")
    mixed_mini = m("mixed load: together", "mini", "sentences_per_s")
    mixed_tiny = m("mixed load: together", "tiny", "sentences_per_s")
    lines += [
        "",
        "**Mixed load** (8 callers × 8 sentences on each model at once, together): "
        f"mini {mixed_mini:.0f} sentences/s ({mixed_mini / own[0][1]:.2f} of alone), tiny "
        f"{mixed_tiny:.0f} sentences/s ({mixed_tiny / own[1][1]:.2f} of alone).",
        "",
        "**A flood on mini** (16 callers × 64 sentences, refusals retried) and one caller "
        "sending 1 sentence at a time to tiny:",
        "",
        "| tiny's caller | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for label, phase, path in (
        ("tiny alone", "light caller: tiny alone", ()),
        ("tiny while mini is flooded", "light caller: tiny while mini is flooded", ("tiny",)),
    ):
        lines.append(
            f"| {label} | {m(phase, *path, 'sentences_per_s'):.0f} | "
            f"{m(phase, *path, 'p50_ms'):.1f} | {m(phase, *path, 'p99_ms'):.1f} |"
        )
    flood = "light caller: tiny while mini is flooded"
    lines += [
        "",
        f"Meanwhile mini ran {m(flood, 'mini', 'sentences_per_s'):.0f} sentences/s; "
        f"{m(flood, 'mini', 'refused'):.0f} of its requests per phase were refused (429, "
        "admission bound). Compute "
        f"slots over the whole run, together: at most {slots['peak_held']} of "
        f"{slots['budget']} held at once; {slots['waited']} of {slots['grants']} batches "
        "waited for a slot.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--threads", type=int, default=0, help="thread budget (0: all cores)")
    args = parser.parse_args()
    from tests.helpers import build_tiny_bert

    from embedloom.store import resolve_model

    with tempfile.TemporaryDirectory() as folder:
        tiny_dir = build_tiny_bert(resolve_model("all-MiniLM-L6-v2").path, Path(folder) / "tiny")
        started = time.perf_counter()
        results = asyncio.run(run(args, tiny_dir))
    results |= {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "backend": args.backend,
        "threads": args.threads,
        "wall_s": time.perf_counter() - started,
        "command": "python benchmarks/many_models.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"many-models-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (RESULTS / "many-models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
