"""What a step sustained (``Summary``), and the results as a table, markdown, JSON
(every sample) and a chart."""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from embedloom.bench.load import Step

__all__ = [
    "CLIENT_BOUND_CORES",
    "Summary",
    "chart_missing",
    "summarize",
    "table",
    "with_ratios",
    "write_chart",
    "write_json",
    "write_markdown",
]

# The load generator is one asyncio thread: at this share of one core it is (near)
# the bottleneck, and the figures say more about the client than the server.
CLIENT_BOUND_CORES = 0.9


@dataclass(frozen=True, slots=True)
class Summary:
    url: str
    server: str  # its label (NAME=URL), else its URL
    api: str
    mode: str
    level: float
    round: int
    requests: int
    ok: int
    errors: dict[str, int]  # status → count, for every status but 200
    seconds: float
    sentences_per_s: float
    tokens_per_s: float | None  # None: the server does not report its tokens
    requests_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    client_cores: float  # the load generator's CPU, in cores
    ratio: float | None = None  # sentences/s ÷ the first URL's in the same round and step

    @property
    def client_bound(self) -> bool:
        return self.client_cores >= CLIENT_BOUND_CORES


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def summarize(step: Step, round_index: int = 0) -> Summary:
    ok = [s for s in step.samples if s.status == 200]
    latencies = sorted(s.seconds for s in ok)
    tokens = [s.tokens for s in ok]
    errors = collections.Counter(str(s.status) for s in step.samples if s.status != 200)
    return Summary(
        url=step.url,
        server=step.server,
        api=step.api,
        mode=step.plan.mode,
        level=step.plan.level,
        round=round_index,
        requests=len(step.samples),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        seconds=round(step.seconds, 6),
        sentences_per_s=round(sum(s.inputs for s in ok) / step.seconds, 2),
        tokens_per_s=(
            round(sum(t for t in tokens if t is not None) / step.seconds, 1)
            if ok and all(t is not None for t in tokens)
            else None
        ),
        requests_per_s=round(len(ok) / step.seconds, 2),
        p50_ms=_percentile(latencies, 0.50),
        p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=round(1000 * latencies[-1], 2) if latencies else None,
        client_cores=round(step.client_cpu_seconds / step.seconds, 2),
    )


def with_ratios(summaries: list[Summary]) -> list[Summary]:
    """Each summary with its sentences/s ÷ the first URL's at the same step and round."""
    from dataclasses import replace

    first: dict[tuple[str, float, int], float] = {}
    out = []
    for summary in summaries:
        key = (summary.mode, summary.level, summary.round)
        base = first.setdefault(key, summary.sentences_per_s)
        out.append(
            replace(summary, ratio=round(summary.sentences_per_s / base, 3) if base else None)
        )
    return out


_COLUMNS = (
    ("server", "server"),
    ("level", "load"),
    ("round", "round"),
    ("sentences_per_s", "sentences/s"),
    ("ratio", "× first"),
    ("tokens_per_s", "tokens/s"),
    ("requests_per_s", "requests/s"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("errors", "errors"),
    ("client_cores", "client CPU"),
)


def _columns(summaries: list[Summary]) -> tuple[tuple[str, str], ...]:
    """The table's columns: "× first" only when there are several servers to compare."""
    if len({s.server for s in summaries}) > 1:
        return _COLUMNS
    return tuple(column for column in _COLUMNS if column[0] != "ratio")


def _cells(summary: Summary, columns: tuple[tuple[str, str], ...]) -> list[str]:
    cells = []
    for name, _ in columns:
        value = getattr(summary, name)
        if name == "level":
            unit = "clients" if summary.mode == "closed" else "req/s"
            value = f"{value:g} {unit}"
        elif name == "errors":
            value = ", ".join(f"{k}×{v}" for k, v in value.items()) or "–"
        elif name == "round":
            value = value + 1
        elif name == "client_cores" and summary.client_bound:
            value = f"{value} (!)"
        cells.append("–" if value is None else str(value))
    return cells


def table(summaries: list[Summary]) -> str:
    """A plain-text table, one row per step and round; a note when the client was
    the bottleneck."""
    columns = _columns(summaries)
    rows = [[title for _, title in columns], *(_cells(s, columns) for s in summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    if any(s.client_bound for s in summaries):
        lines.append(
            f"(!) the load generator used ≥ {CLIENT_BOUND_CORES:g} of a core: those figures "
            "are bounded by the client; run it on another machine or with fewer clients"
        )
    return "\n".join(line.rstrip() for line in lines)


def write_markdown(path: Path, summaries: list[Summary], heading: str) -> None:
    columns = _columns(summaries)
    lines = [
        f"# {heading}",
        "",
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cells(s, columns)) + " |" for s in summaries),
        "",
    ]
    path.write_text("\n".join(lines))


def write_json(path: Path, steps: list[Step], summaries: list[Summary], command: str) -> None:
    """Every sample of every step (``[started, seconds, status, inputs, tokens]``)
    beside its summary."""
    payload = {
        "command": command,
        "steps": [
            {
                "summary": asdict(summary),
                "sample_fields": ["started", "seconds", "status", "inputs", "tokens"],
                "samples": [
                    [round(s.started, 6), round(s.seconds, 6), s.status, s.inputs, s.tokens]
                    for s in step.samples
                ],
            }
            for step, summary in zip(steps, summaries, strict=True)
        ],
    }
    path.write_text(json.dumps(payload))


def chart_missing() -> str | None:
    """Why a chart cannot be drawn (matplotlib, the ``bench`` extra, is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--chart needs matplotlib: pip install 'embedloom[bench]'"
    return None


def write_chart(path: Path, summaries: list[Summary]) -> None:
    """Throughput and latency percentiles against the load, one line per server (the
    mean over rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_server: dict[str, dict[float, list[Summary]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for summary in summaries:
        by_server[summary.server][summary.level].append(summary)
    figure, (speed, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, levels in by_server.items():
        xs = sorted(levels)
        speed.plot(xs, [_mean(levels[x], "sentences_per_s") for x in xs], marker="o", label=server)
        for field, style in (("p50_ms", "-"), ("p99_ms", "--")):
            latency.plot(
                xs,
                [_mean(levels[x], field) for x in xs],
                style,
                marker="o",
                label=f"{server} {field.removesuffix('_ms')}",
            )
    unit = "clients" if summaries and summaries[0].mode == "closed" else "requests/s offered"
    speed.set(xlabel=unit, ylabel="sentences/s", title="throughput")
    speed.set_ylim(bottom=0)
    latency.set(xlabel=unit, ylabel="ms", title="latency", yscale="log")
    levels_asked = sorted({s.level for s in summaries})
    for axes in (speed, latency):
        if levels_asked and levels_asked[-1] >= 8 * levels_asked[0]:
            axes.set_xscale("log", base=2)  # a sweep such as 1, 8, 32, 128
            axes.set_xticks(levels_asked, [f"{level:g}" for level in levels_asked])
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mean(summaries: list[Summary], field: str) -> float:
    values = [getattr(s, field) for s in summaries if getattr(s, field) is not None]
    return sum(values) / len(values) if values else float("nan")
