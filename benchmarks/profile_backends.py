"""Where the time goes, per variant: tokenisation, padding into arrays, and the
model's operators (torch's profiler, or ONNX Runtime's), on the standard workload.

    .venv/bin/python benchmarks/profile_backends.py   # ~2 minutes; writes results/profile.md

The batches are the engine's (its batcher, with the default limits: at most 32
inputs and 8,192 padded tokens); one inference thread with both cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"
SENTENCES = 1024
VARIANTS = ("torch/fp32", "torch/bf16", "onnx/fp32", "onnx/int8")

sys.path.insert(0, str(HERE))
from workload import sentences  # noqa: E402


@dataclass(frozen=True)
class _Queued:
    """One workload input as the engine's queue holds it (all queued at once)."""

    n_tokens: int
    owner: object = None
    waiting_since: float = 0.0
    deadline: float | None = None
    priority_class: int = 1


def batches(backend: Any, texts: list[str]) -> tuple[list[list[Any]], float]:
    """The workload tokenised, then cut into batches by the engine's own batcher."""
    from embedloom.batching import BatchPolicy, plan_batch
    from embedloom.config import Settings

    started = time.perf_counter()
    tokenized = backend.tokenize(texts)
    tokenize_s = time.perf_counter() - started
    defaults = Settings()
    policy = BatchPolicy(
        max_batch_tokens=defaults.max_batch_tokens,
        max_batch_size=defaults.max_batch_size,
        overhead_tokens=defaults.batch_overhead_tokens,
    )
    waiting = list(tokenized)
    out = []
    while waiting:
        plan = plan_batch([_Queued(item.n_tokens) for item in waiting], policy)
        assert plan is not None
        chosen = set(plan.positions)
        out.append([waiting[i] for i in plan.positions])
        waiting = [item for i, item in enumerate(waiting) if i not in chosen]
    return out, tokenize_s


def profile(variant_name: str) -> dict[str, Any]:
    import torch

    from embedloom.store import ModelStore, resolve_model
    from embedloom.variants.catalog import Variant, onnx_export, open_variant

    torch.set_num_threads(2)
    variant = Variant.parse(variant_name)
    model_dir, store = resolve_model("all-MiniLM-L6-v2").path, ModelStore(HOME, offline=True)
    backend = open_variant(variant, model_dir, store, threads=2, device="cpu")()
    texts = sentences(SENTENCES)
    grouped, tokenize_s = batches(backend, texts)
    for batch in grouped[:4]:
        backend.embed(batch)  # warm up
    collate_s = 0.0
    for batch in grouped:
        started = time.perf_counter()
        backend.text.collate(batch)
        collate_s += time.perf_counter() - started
    started = time.perf_counter()
    for batch in grouped:
        backend.embed(batch)
    embed_s = time.perf_counter() - started
    if variant.backend == "torch":
        operators = _torch_operators(backend, grouped)
    else:
        operators = _ort_operators(onnx_export(variant, model_dir, store), backend, grouped)
    return {
        "variant": variant_name,
        "sentences": SENTENCES,
        "batches": len(grouped),
        "tokenize_ms_per_1000": round(1000 * tokenize_s * 1000 / SENTENCES, 1),
        "collate_ms_per_1000": round(1000 * collate_s * 1000 / SENTENCES, 1),
        "embed_ms_per_1000": round(1000 * embed_s * 1000 / SENTENCES, 1),
        "sentences_per_s": round(SENTENCES / embed_s, 1),
        "operators": operators,
    }


def _torch_operators(backend: Any, grouped: list[list[Any]]) -> dict[str, float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as recorded:
        for batch in grouped:
            backend.embed(batch)
    totals: dict[str, float] = defaultdict(float)
    for event in recorded.key_averages():
        totals[event.key] += event.self_cpu_time_total
    return _shares(totals)


def _ort_operators(export: Path, backend: Any, grouped: list[list[Any]]) -> dict[str, float]:
    import onnxruntime as ort

    from embedloom.backends.onnx import MODEL_FILE

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(
        str(export / MODEL_FILE), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    for batch in grouped:
        arrays = backend.text.collate(batch)
        session.run(None, {n: arrays[n] for n in names})
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return _shares(totals)


def _shares(totals: dict[str, float]) -> dict[str, float]:
    whole = sum(totals.values()) or 1.0
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
    return {name: round(value / whole, 3) for name, value in top}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(profile(sys.argv[1])))
        return
    import subprocess

    rows = []
    for variant in VARIANTS:
        print(f"[{time.strftime('%H:%M:%S')}] {variant} …", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, variant], check=True, stdout=subprocess.PIPE, text=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [
        "# Where the time goes",
        "",
        f"`benchmarks/profile_backends.py` · {SENTENCES} workload sentences in the engine's "
        "batches (its batcher, default limits: ≤ 32 inputs, ≤ 8,192 tokens) · one thread "
        "driving 2 intra-op threads",
        "",
        "| variant | tokenise ms/1000 | pad+mask ms/1000 | model ms/1000 | model sentences/s | "
        "top operators (share of operator time) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ops = ", ".join(f"{name} {share:.0%}" for name, share in row["operators"].items())
        lines.append(
            f"| {row['variant']} | {row['tokenize_ms_per_1000']} | {row['collate_ms_per_1000']} | "
            f"{row['embed_ms_per_1000']} | {row['sentences_per_s']} | {ops} |"
        )
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
