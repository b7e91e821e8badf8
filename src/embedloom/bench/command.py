"""``embedloom bench URL [URL …]``: the same workload against each server in turn,
in interleaved rounds, one step per concurrency (or rate); a table, and the files
asked for."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from embedloom.bench.api import Api, detect_api
from embedloom.bench.flags import BenchOptions
from embedloom.bench.http import Endpoint
from embedloom.bench.load import LoadPlan, Progress, Step, run_step
from embedloom.bench.report import (
    chart_missing,
    summarize,
    table,
    with_ratios,
    write_chart,
    write_json,
    write_markdown,
)
from embedloom.bench.workload import Workload, workload_texts
from embedloom.errors import InvalidInput

__all__ = ["run_bench"]


def run_bench(options: BenchOptions, command: Sequence[str] = ()) -> str:
    """Run every step against every URL; the table (the files are written as asked)."""
    if options.chart_path is not None and (missing := chart_missing()) is not None:
        raise InvalidInput(missing)  # before minutes of load, not after
    if options.duration is None and options.requests is None:
        raise InvalidInput("say how long each step runs: --duration SECONDS or --requests N")
    for path in (options.json_path, options.markdown_path, options.chart_path):
        if path is not None and not path.parent.is_dir():
            raise InvalidInput(f"{path}: no directory {path.parent} to write it in")
    texts = workload_texts(options.texts, field=options.text_field, mean_words=options.words)
    workload = Workload(texts, options.mix)
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    endpoints = []
    for url in options.urls:
        try:
            endpoints.append(Endpoint.parse(url))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    steps = asyncio.run(_run(options, endpoints, workload, headers))
    summaries = with_ratios(
        [
            summarize(step, index // (len(endpoints) * len(options.levels)))
            for index, step in enumerate(steps)
        ]
    )
    report = table(summaries)
    line = shlex.join(["embedloom", "bench", *command])
    heading = (
        f"embedloom bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — `{line}` "
        f"(inputs per request: {options.mix})"
    )
    if options.markdown_path:
        write_markdown(options.markdown_path, summaries, heading)
    if options.json_path:
        write_json(options.json_path, steps, summaries, line)
    if options.chart_path:
        write_chart(options.chart_path, summaries)
    return report


async def _run(
    options: BenchOptions,
    endpoints: list[Endpoint],
    workload: Workload,
    headers: dict[str, str],
) -> list[Step]:
    apis: list[Api] = [
        await detect_api(endpoint, options.api, options.model, headers) for endpoint in endpoints
    ]
    steps = []
    # Rounds outermost, servers innermost: each server meets the machine's drift at
    # every step, so the ratios within a round are fair.
    for round_index in range(options.rounds):
        for level in options.levels:
            plan = LoadPlan(options.mode, level, options.duration, options.requests, options.warmup)
            for endpoint, api in zip(endpoints, apis, strict=True):
                label = f"round {round_index + 1}, {endpoint.base()}{api.path}, {level:g}"
                progress = _progress_line(label) if options.progress else None
                steps.append(await run_step(endpoint, api, workload, plan, headers, progress))
                if progress is not None:
                    sys.stderr.write("\n")
    return steps


def _progress_line(label: str) -> Progress:
    def show(answered: int, failed: int, seconds: float) -> None:
        rate = answered / seconds if seconds > 0 else 0.0
        sys.stderr.write(
            f"\r{label}: {answered} answered, {failed} failed, {rate:.1f} requests/s, "
            f"{seconds:.0f} s"
        )
        sys.stderr.flush()

    return show
