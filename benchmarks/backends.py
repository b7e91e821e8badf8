"""Every backend × dtype against sentence-transformers fp32, in one run.

    .venv/bin/python benchmarks/backends.py --duration 10  # ~17 min; writes benchmarks/results/

Each phase runs in a fresh process, one after another, on the standard
workload (``workload.py``, 2,048 sentences), in two rounds; ratios are taken
within a round and the report gives each round and their mean:

- ``peaks``: torch matrix multiply (2048², 2 threads) in fp32, bf16 (where the
  CPU has bf16 units) and int8 (``torch._int_mm``, oneDNN's VNNI kernel): the
  compute ceilings each variant's arithmetic is compared with;
- ``bare <variant>``: the variant's runtime alone (the backend's ``embed``, one
  model with 2 threads), on the workload in batches of 32 sorted by length: what
  the engine is measured against (``engine ÷ bare``);
- ``st``: sentence-transformers ``encode`` in fp32 at its best batch size;
- ``engine <variant>``: the engine in-process on that variant (the default
  sharing plan): the workload in calls of 256 sentences (full, length-sorted
  batches; best of three passes), then 32 concurrent callers of one sentence each (the batches the
  server's 32 clients can make, without HTTP); a variant the
  accuracy gate refuses is measured all the same (built directly, bypassing the
  choice) and marked so; one this CPU cannot run (bf16 without bf16 units) is
  left out; the phase's peak RSS is recorded;
- ``server <variant>``: ``embedloom serve --backend B --dtype D`` under the load
  generator, 32 clients × 1 sentence, for the variants the gate lets serve and
  for ``auto``.

The gate's figures come from the trial ``auto`` runs (kept in the benchmark's
own store, ``benchmarks/results/.home``), which also decides what ``auto`` is;
before it, ``embedloom variants --build`` builds the slow variants (int8
OpenVINO) so that ``auto`` chooses among all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"
PYTHON = sys.executable
WORKLOAD_SIZE = 2048
ALL_VARIANTS = (
    "torch/fp32",
    "torch/bf16",
    "onnx/fp32",
    "onnx/int8",
    "openvino/fp32",
    "openvino/bf16",
    "openvino/int8",
)

sys.path.insert(0, str(HERE))
from run import (  # noqa: E402
    _free_port,
    _load,
    _with_server,
    callers_32x1,
    encode_by_batch_size,
    serve_command,
)
from workload import sentences  # noqa: E402


def _runnable_here() -> tuple[str, ...]:
    # A variant this CPU cannot run is left out (not refused by the gate: absent).
    from embedloom.variants.catalog import Variant, unsupported_reason

    return tuple(v for v in ALL_VARIANTS if unsupported_reason(Variant.parse(v), "cpu") is None)


VARIANTS = _runnable_here()


def phase_peaks() -> dict[str, Any]:
    import torch

    from embedloom.cpu import cpu_flags

    torch.set_num_threads(2)
    size, out = 2048, {}
    products = {
        "fp32": lambda a, b: a @ b,
        "bf16": lambda a, b: a @ b,
        # int8 × int8 → int32 through oneDNN (VNNI where the CPU has it).
        "int8": torch._int_mm,
    }
    for name, product in products.items():
        if name == "bf16" and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            out["bf16_gflops"] = None  # emulated: not a ceiling of anything
            continue
        if name == "int8":
            a = torch.randint(-128, 127, (size, size), dtype=torch.int8)
            b = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        else:
            dtype = torch.float32 if name == "fp32" else torch.bfloat16
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(3):
            product(a, b)
        best = 0.0
        for _ in range(3):  # best of three: the peak, not the noise
            started, repeats = time.perf_counter(), 10
            for _ in range(repeats):
                product(a, b)
            best = max(best, 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9)
        out[f"{name}_gflops"] = round(best, 1)
    return out


def phase_bare(variant: str) -> dict[str, Any]:
    """The variant's runtime alone on the workload: batches of 32 sorted by length,
    one model with 2 threads, best of three passes."""
    from embedloom.store import ModelStore, resolve_model
    from embedloom.variants.catalog import Variant, open_variant

    model = resolve_model("all-MiniLM-L6-v2")
    backend = open_variant(
        Variant.parse(variant), model.path, ModelStore(HOME, offline=True), threads=2, device="cpu"
    )()
    tokens = backend.tokenize(sentences(WORKLOAD_SIZE))
    tokens.sort(key=lambda t: t.n_tokens)
    batches = [tokens[i : i + 32] for i in range(0, len(tokens), 32)]
    for batch in batches[:4]:
        backend.embed(batch)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            backend.embed(batch)
        best = max(best, len(tokens) / (time.perf_counter() - started))
    return {"sentences_per_s": round(best, 1)}


def phase_st() -> dict[str, Any]:
    texts = sentences(WORKLOAD_SIZE)
    model, by_batch = encode_by_batch_size(texts)
    best = max(by_batch, key=lambda b: by_batch[b])
    tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    return {
        "best_batch_size": best,
        "sentences_per_s": by_batch[best],
        "by_batch_size": by_batch,
        "tokens": tokens,
        "model_flops_per_token": _flops_per_token(model, tokens / len(texts)),
    }


def phase_engine(variant: str, duration: float) -> dict[str, Any]:
    from embedloom import Engine, Settings
    from embedloom.sharing import plan_sharing
    from embedloom.store import ModelStore, resolve_model
    from embedloom.threads import usable_cores
    from embedloom.variants.catalog import Variant, open_variant

    settings = Settings(home=str(HOME), offline=True)

    def engine() -> Engine:
        if variant == "auto":
            return Engine.from_settings(settings)
        # Built directly, past the choice: a variant the gate refuses is timed too.
        plan = plan_sharing(settings, cores=usable_cores().usable, gpus=0)
        model = resolve_model(settings.model_ref)
        factory = open_variant(
            Variant.parse(variant),
            model.path,
            ModelStore(HOME, offline=True),
            threads=plan.threads_per_replica,
            device="cpu",
        )
        return Engine(factory, settings=settings, sharing=plan, model_id=model.id)

    async def run() -> dict[str, Any]:
        import resource

        texts = sentences(WORKLOAD_SIZE)
        async with engine() as running:
            await running.embed(texts[:256])  # warm up: first batches pay for allocation
            before = running.statistics()
            seconds = float("inf")
            for _ in range(3):  # best of three passes, as the bare runtime's
                started = time.perf_counter()
                for i in range(0, len(texts), 256):
                    await running.embed(texts[i : i + 256])
                seconds = min(seconds, time.perf_counter() - started)
            stats = running.statistics()
            info = running.model_info
            callers = await callers_32x1(running, texts, duration)
        tokens = (stats.input_tokens - before.input_tokens) / 3
        padded = (stats.padded_tokens - before.padded_tokens) / 3
        return {
            "variant": f"{info.backend}/{info.dtype}",
            "sentences_per_s": round(len(texts) / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1),
            "padding_overhead": round(padded / tokens - 1, 3),
            "callers_32x1_sentences_per_s": callers,
            "sharing": f"{running.sharing.strategy} {running.sharing.replicas}"
            f"x{running.sharing.threads_per_replica}",
            "choice_reason": info.choice_reason,
            # KiB on Linux: the process's peak, the model and every batch included.
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }

    return asyncio.run(run())


def phase_server(variant: str, duration: float) -> dict[str, Any]:
    backend, _, dtype = variant.partition("/")
    port = _free_port()
    # "auto" alone stands for both flags.
    flags = ("--home", str(HOME), "--backend", backend, "--dtype", dtype or backend)
    command = serve_command(port, *flags)

    def measure() -> dict[str, Any]:
        _load(port, 4, 1, 2.0)  # warm up connections and the allocator
        return _load(port, 32, 1, duration)

    return dict(_with_server(command, port, measure))


def phase_gate() -> dict[str, Any]:
    """The auto trial's record: every variant's gate figures and probe speed."""
    from embedloom import Settings
    from embedloom.sharing import plan_sharing
    from embedloom.store import ModelStore, resolve_model
    from embedloom.threads import usable_cores
    from embedloom.variants.choice import choose_variant

    settings = Settings(home=str(HOME), offline=True)
    plan = plan_sharing(settings, cores=usable_cores().usable, gpus=0)
    chosen = choose_variant(
        resolve_model(settings.model_ref).path,
        ModelStore(HOME, offline=True),
        threads=plan.threads_per_replica,
        device="cpu",
    )
    return {
        "auto": str(chosen.variant),
        "reason": chosen.reason,
        "candidates": [c.to_json() for c in chosen.candidates],
    }


def _flops_per_token(model: Any, mean_tokens: float) -> float:
    """Multiply-adds ×2 per token of a BERT-style encoder: the dense layers, plus
    attention's two products over a sequence of ``mean_tokens``."""
    config = model[0].auto_model.config
    hidden, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 2 * layers * 2 * mean_tokens * hidden
    return float(dense + attention)


def _run_phase(*args: str) -> dict[str, Any]:
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(args)} …", file=sys.stderr, flush=True)
    out = subprocess.run(
        [PYTHON, __file__, "--phase", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _round(duration: float, servable: list[str]) -> dict[str, Any]:
    round_: dict[str, Any] = {"peaks": _run_phase("peaks"), "st": _run_phase("st")}
    round_["bare"] = {v: _run_phase("bare", v) for v in VARIANTS}
    round_["engine"] = {
        v: _run_phase("engine", v, "--duration", str(duration)) for v in (*VARIANTS, "auto")
    }
    round_["server"] = {
        v: _run_phase("server", v, "--duration", str(duration)) for v in (*servable, "auto")
    }
    return round_


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", nargs="+")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.phase:
        name, *rest = args.phase
        if name == "server":
            result = phase_server(rest[0], args.duration)
        elif name == "engine":
            result = phase_engine(rest[0], args.duration)
        elif name == "bare":
            result = phase_bare(rest[0])
        else:
            result = {"peaks": phase_peaks, "st": phase_st, "gate": phase_gate}[name]()
        print(json.dumps(result))
        return

    # The slow variants first, so that auto's trial (once; later phases reuse its
    # record) chooses among all of them.
    subprocess.run(
        [str(Path(PYTHON).with_name("embedloom")), "variants", "--build", "--home", str(HOME)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    gate = _run_phase("gate")
    servable = [c["variant"] for c in gate["candidates"] if not c["refused"]]
    servable = [v for v in VARIANTS if v in servable]
    rounds = [_round(args.duration, servable) for _ in range(args.rounds)]
    results = {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "workload_sentences": WORKLOAD_SIZE,
        "gate": gate,
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = results["when"].replace("-", "").replace(":", "")
    (RESULTS / f"backends-{stamp}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "backends.md").write_text(_report(results))
    _chart(results, RESULTS / "backends.png")
    print(_report(results))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: figures averaged over rounds, ratios taken per round."""
    rounds = results["rounds"]
    gates = {c["variant"]: c for c in results["gate"]["candidates"]}
    rows = []
    for variant in (*VARIANTS, "auto"):
        engine = [r["engine"][variant] for r in rounds]
        server = [r["server"].get(variant) for r in rounds]
        speed = [e["sentences_per_s"] for e in engine]
        flops = [
            e["tokens_per_s"] * r["st"]["model_flops_per_token"] / 1e9
            for e, r in zip(engine, rounds, strict=True)
        ]
        actual = engine[0]["variant"] if variant == "auto" else variant
        bare = [r["bare"][actual]["sentences_per_s"] for r in rounds]
        precision = actual.partition("/")[2]
        peaks = [r["peaks"].get(f"{precision}_gflops") for r in rounds]
        row = {
            "variant": variant if variant != "auto" else f"auto → {actual}",
            "bare": _mean(bare),
            "engine_x_bare": _mean([e / b for e, b in zip(speed, bare, strict=True)]),
            "peak_rss_mb": max(e["peak_rss_mb"] for e in engine),
            "of_peak": _mean([f / p for f, p in zip(flops, peaks, strict=True)])
            if all(peaks)
            else None,
            "sentences_per_s": _mean(speed),
            "tokens_per_s": _mean([e["tokens_per_s"] for e in engine]),
            "x_st": _mean(
                [s / r["st"]["sentences_per_s"] for s, r in zip(speed, rounds, strict=True)]
            ),
            "callers": _mean([e["callers_32x1_sentences_per_s"] for e in engine]),
            "server": _mean([s["sentences_per_s"] for s in server]) if all(server) else None,
            "server_x_callers": _mean(
                [
                    s["sentences_per_s"] / e["callers_32x1_sentences_per_s"]
                    for s, e in zip(server, engine, strict=True)
                ]
            )
            if all(server)
            else None,
            "server_x_engine": _mean(
                [s["sentences_per_s"] / e for s, e in zip(server, speed, strict=True)]
            )
            if all(server)
            else None,
            "gate": gates.get(engine[0]["variant"] if variant == "auto" else variant),
        }
        rows.append(row)
    return rows


def _report(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    st = [r["st"]["sentences_per_s"] for r in rounds]
    peaks = [r["peaks"] for r in rounds]
    lines = [
        "# Backends × dtypes",
        "",
        f"{results['when']} · {results['machine']['cpu']}, {results['machine']['cores']} cores · "
        f"{results['workload_sentences']} generated sentences "
        f"({rounds[0]['st']['tokens'] / results['workload_sentences']:.1f} tokens on average) · "
        f"{len(rounds)} rounds · `benchmarks/backends.py`",
        "",
        f"sentence-transformers fp32 at its best batch size: "
        f"{', '.join(f'{s:.0f}' for s in st)} sentences/s (by round). "
        f"Peaks (torch matmul 2048², 2 threads): fp32 "
        f"{', '.join(str(p['fp32_gflops']) for p in peaks)} GFLOP/s, bf16 "
        f"{', '.join(str(p['bf16_gflops'] or '– (no bf16 units)') for p in peaks)} GFLOP/s, "
        f"int8 {', '.join(str(p['int8_gflops']) for p in peaks)} GOP/s. "
        f"The model does {rounds[0]['st']['model_flops_per_token'] / 1e6:.1f} MFLOP per token.",
        "",
        "| variant | bare runtime | engine sentences/s | engine ÷ bare | tokens/s | × ST fp32 "
        "| of its precision's peak | peak RSS MB | engine 32×1 | server 32×1 | server ÷ engine "
        "| server ÷ engine 32×1 | gate: mean cos | min cos | top-10 overlap | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in _table(results):
        gate = row["gate"] or {}
        figures = gate.get("gate") or {}
        verdict = "reference" if row["variant"].startswith("torch/fp32") else "passes"
        if gate.get("refused"):
            verdict = "**refused**: " + gate["refused"].split(": ", 1)[-1]
        cos = (
            (
                f"{figures['mean_cosine']:.5f}",
                f"{figures['min_cosine']:.5f}",
                f"{figures['neighbour_overlap']:.1%}",
            )
            if figures
            else ("1", "1", "100%")
        )
        server = f"{row['server']:.0f}" if row["server"] else "–"
        ratio = f"{row['server_x_engine']:.2f}" if row["server_x_engine"] else "–"
        ratio_callers = f"{row['server_x_callers']:.2f}" if row["server_x_callers"] else "–"
        of_peak = f"{row['of_peak']:.0%}" if row["of_peak"] else "–"
        lines.append(
            f"| {row['variant']} | {row['bare']:.0f} | {row['sentences_per_s']:.0f} | "
            f"{row['engine_x_bare']:.2f} | {row['tokens_per_s']:.0f} | "
            f"{row['x_st']:.2f} | {of_peak} | {row['peak_rss_mb']} | "
            f"{row['callers']:.0f} | {server} | {ratio} | {ratio_callers} | "
            f"{cos[0]} | {cos[1]} | {cos[2]} | {verdict} |"
        )
    lines += [
        "",
        f"auto's trial (calibration set, {results['gate']['auto']}): {results['gate']['reason']}",
        "",
        "Bare runtime: the variant's backend alone (one model, 2 threads), the workload in "
        "batches of 32 sorted by length, best of three passes. Of its precision's peak: the "
        "model's arithmetic per second (dense layers and attention) ÷ the matmul peak of the "
        "variant's precision (int8's includes the layers kept in fp32). "
        "Engine: in-process, the default sharing plan "
        f"({rounds[0]['engine']['auto']['sharing']}), the workload in calls of 256 sentences "
        "(full, length-sorted batches); engine 32×1: 32 concurrent in-process callers of one "
        "sentence (the batches 32 clients can form). Server: `embedloom serve --backend B "
        "--dtype D`, the load generator in its own process on the same 2 cores, 32 "
        "closed-loop clients × 1 sentence. Figures are means of the rounds; ratios are taken "
        "within each round, then averaged.",
        "",
        "![backends](backends.png)",
        "",
    ]
    return "\n".join(lines)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _table(results)
    st = _mean([r["st"]["sentences_per_s"] for r in results["rounds"]])
    names = [row["variant"] for row in rows]
    positions = range(len(rows))
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.bar(
        [p - 0.2 for p in positions],
        [r["sentences_per_s"] for r in rows],
        0.4,
        label="engine, in-process",
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [r["server"] or 0 for r in rows],
        0.4,
        label="server, 32 clients × 1 sentence",
    )
    axis.axhline(st, color="grey", linestyle="--", label=f"sentence-transformers fp32 ({st:.0f})")
    axis.set_xticks(list(positions), names)
    axis.set_ylabel("sentences/s")
    axis.set_title("all-MiniLM-L6-v2 on 2 cores: backends × dtypes")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
