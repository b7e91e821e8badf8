"""Prometheus metrics: HTTP counters kept here, engine figures read from ``statistics()``.

Every model-level series has a ``model`` label (the served name); the thread
budget and the compute slots held are the process's, unlabelled. A model's
counters start again from zero when it is reloaded (Prometheus reads that as a
counter reset).

One process: the engine's figures are read at scrape time by a collector.
Several worker processes (``--workers``): ``prometheus_client``'s multiprocess
mode keeps every value in a file per process, and any worker's ``/metrics``
sums them all. Engine figures are not ``prometheus_client`` metrics, so each
worker mirrors its engine's statistics into multiprocess counters and gauges
(every second, and before it renders); histograms are mirrored as one counter
per bucket and put back together when rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from embedloom._version import __version__
from embedloom.engine import Engine, EngineStatistics, ModelInfo
from embedloom.registry import Registry
from embedloom.stats import HistogramSnapshot

__all__ = ["ServerMetrics"]

_REQUEST_SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MIRROR_SECONDS = 1.0
_MIRRORED_BUCKET = "_mirror_bucket"
_MIRRORED_SUM = "_mirror_sum"
_SAME_IN_EVERY_WORKER = frozenset({"embedloom_threads_per_replica"})


class ServerMetrics:
    """A registry per app, so several servers in one process (tests) never collide.

    ``multiprocess_dir``: the directory of ``prometheus_client``'s multiprocess
    mode (``PROMETHEUS_MULTIPROC_DIR``, set before ``prometheus_client`` was
    imported); None for a single process.
    """

    def __init__(self, registry: Registry, *, multiprocess_dir: Path | None = None) -> None:
        # ``*_created`` series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._multiprocess_dir = multiprocess_dir
        # In multiprocess mode values live in the directory's files, not in a registry.
        own = None if multiprocess_dir else CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "embedloom_http_requests",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
            registry=own,
        )
        self._durations = Histogram(
            "embedloom_http_request_duration_seconds",
            "HTTP request durations, from first byte in to last byte out",
            ("route",),
            buckets=_REQUEST_SECONDS_BOUNDS,
            registry=own,
        )
        self._mirror: _EngineMirror | None = None
        if own is not None:
            own.register(_EngineCollector(registry))
            self.registry = own
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._mirror = _EngineMirror()
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(
                _Reassembled(MultiProcessCollector(None, path=str(multiprocess_dir)))  # type: ignore[no-untyped-call]
            )
            self.registry.register(_BuildCollector(registry))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._durations.labels(route).observe(seconds)

    @property
    def fleet_wide(self) -> bool:
        """Whether the figures are every worker's together (``--workers``), not this
        process's alone."""
        return self._mirror is not None

    def render(self) -> bytes:
        self._sync()
        return generate_latest(self.registry)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every series as rendered: (sample name, labels, value)."""
        self._sync()
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value

    def _sync(self) -> None:
        if self._mirror is not None:
            self._mirror.sync(self._registry)

    @contextlib.asynccontextmanager
    async def mirroring(self) -> AsyncIterator[None]:
        """While open, keep this worker's engine figures in the shared files."""
        mirror = self._mirror
        if mirror is None:
            yield
            return

        async def loop() -> None:
            while True:
                mirror.sync(self._registry)
                await asyncio.sleep(_MIRROR_SECONDS)

        task = asyncio.get_running_loop().create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            mirror.sync(self._registry)


def _info_or_none(engine: Engine) -> ModelInfo | None:
    try:
        return engine.model_info
    except Exception:
        return None


class _EngineCollector(Collector):
    """One process: the engines' figures, read when scraped."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        engines = [(name, engine, engine.statistics()) for name, engine in self._registry.engines()]
        yield _build_info(engines)
        yield from _process_gauges(self._registry)
        gauges: dict[str, GaugeMetricFamily] = {}
        counters: dict[str, CounterMetricFamily] = {}
        histograms: dict[str, HistogramMetricFamily] = {}
        for model, _, stats in engines:
            for name, documentation, value in _engine_gauges(stats):
                if name not in gauges:
                    gauges[name] = GaugeMetricFamily(name, documentation, labels=("model",))
                gauges[name].add_metric((model,), value)
            for name, documentation, outcome, value in _engine_counters(stats):
                if name not in counters:
                    labels = ("model", "outcome") if outcome else ("model",)
                    counters[name] = CounterMetricFamily(name, documentation, labels=labels)
                counters[name].add_metric((model, outcome) if outcome else (model,), value)
            for name, documentation, outcome, tenant, value in _tenant_counters(stats):
                names = ["model", "tenant", "outcome"] if outcome else ["model", "tenant"]
                if name not in counters:
                    counters[name] = CounterMetricFamily(name, documentation, labels=names)
                counters[name].add_metric([model, tenant, outcome][: len(names)], value)
            for name, documentation, snapshot in _engine_histograms(stats):
                if name not in histograms:
                    histograms[name] = HistogramMetricFamily(name, documentation, labels=("model",))
                buckets, total = _buckets(snapshot)
                histograms[name].add_metric((model,), buckets, total)
        yield from gauges.values()
        yield from counters.values()
        yield from histograms.values()


def _process_gauges(registry: Registry) -> Iterator[GaugeMetricFamily]:
    slots = registry.slots.statistics()
    yield GaugeMetricFamily(
        "embedloom_thread_budget", "compute threads allowed in all", value=slots.budget
    )
    yield GaugeMetricFamily(
        "embedloom_compute_slots_held",
        "compute threads running a batch now, all models together",
        value=slots.held,
    )


def _engine_gauges(stats: EngineStatistics) -> Iterable[tuple[str, str, float]]:
    worker = stats.worker
    return (
        ("embedloom_queue_size", "inputs waiting for a batch", stats.queued_inputs),
        ("embedloom_admitted_inputs", "inputs admitted: queued + running", stats.admitted_inputs),
        ("embedloom_max_queued_inputs", "the admission bound", stats.max_queued_inputs),
        ("embedloom_running_batches", "batches handed to the model", stats.running_batches),
        ("embedloom_inference_threads", "threads calling the model", worker.inference_threads),
        ("embedloom_replicas", "model instances", worker.replicas),
        (
            "embedloom_threads_per_replica",
            "intra-op threads per replica, as the backend reports",
            worker.threads_per_replica,
        ),
        ("embedloom_busy_inference_threads", "inference threads running a batch", worker.busy),
    )


def _engine_counters(stats: EngineStatistics) -> Iterable[tuple[str, str, str, float]]:
    """(name, help, outcome label or "", total)."""
    requests = ("embedloom_engine_requests", "engine requests by outcome")
    return (
        (*requests, "admitted", stats.requests_admitted),
        (*requests, "completed", stats.requests_completed),
        (*requests, "failed", stats.requests_failed),
        (*requests, "rejected", stats.requests_rejected),
        (*requests, "cancelled", stats.requests_cancelled),
        (*requests, "expired", stats.requests_expired),
        ("embedloom_inputs_embedded", "inputs embedded", "", stats.inputs_embedded),
        (
            "embedloom_inputs_dropped",
            "inputs dropped: their caller left",
            "",
            stats.inputs_dropped,
        ),
        ("embedloom_batches", "batches run by the model", "", stats.batches_run),
        (
            "embedloom_batches_shared",
            "batches that held inputs of more than one request",
            "",
            stats.batches_shared,
        ),
        (
            "embedloom_batches_split",
            "failed batches split in two and retried, to isolate a bad input",
            "",
            stats.batches_split,
        ),
        (
            "embedloom_inference_restarts",
            "inference threads replaced after dying or hanging",
            "",
            stats.inference_restarts,
        ),
        ("embedloom_input_tokens", "tokens of all inputs", "", stats.input_tokens),
        ("embedloom_padded_tokens", "tokens run, padding included", "", stats.padded_tokens),
    )


def _tenant_counters(stats: EngineStatistics) -> Iterable[tuple[str, str, str, str, float]]:
    """(name, help, outcome label or "", tenant, total) per tenant (named by its key's
    name or the tenant header; never by a key)."""
    requests = ("embedloom_tenant_requests", "engine requests by tenant and admission outcome")
    inputs = ("embedloom_tenant_inputs_embedded", "inputs embedded by tenant")
    for tenant, counts in stats.tenants.items():
        yield (*requests, "admitted", tenant, counts.requests_admitted)
        yield (*requests, "rejected", tenant, counts.requests_rejected)
        yield (*inputs, "", tenant, counts.inputs_embedded)


def _engine_histograms(stats: EngineStatistics) -> Iterable[tuple[str, str, HistogramSnapshot]]:
    return (
        ("embedloom_batch_size", "inputs per batch", stats.batch_size),
        ("embedloom_batch_tokens", "padded tokens per batch", stats.batch_tokens),
        ("embedloom_input_length_tokens", "tokens per input", stats.input_length),
        ("embedloom_queue_duration_seconds", "wait per input", stats.queue_seconds),
        ("embedloom_inference_duration_seconds", "time per batch", stats.inference_seconds),
    )


def _buckets(snapshot: HistogramSnapshot) -> tuple[list[tuple[str, float]], float]:
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(snapshot.bounds, snapshot.counts, strict=False):
        running += count
        cumulative.append((_bound_label(bound), running))
    cumulative.append(("+Inf", snapshot.count))
    return cumulative, snapshot.total


def _bound_label(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def _build_info(engines: Iterable[tuple[str, Engine, EngineStatistics]]) -> InfoMetricFamily:
    family = InfoMetricFamily(
        "embedloom_build", "the server and each loaded model", labels=("model",)
    )
    for model, engine, stats in engines:
        build = {"version": __version__, "state": stats.state, "strategy": stats.worker.strategy}
        info = _info_or_none(engine)
        if info is not None:
            build |= {"model_id": info.model_id, "backend": info.backend, "dtype": info.dtype}
        family.add_metric((model,), build)
    return family


class _BuildCollector(Collector):
    """What this worker runs: the same in every worker, so not summed."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[InfoMetricFamily]:
        yield _build_info((n, e, e.statistics()) for n, e in self._registry.engines())


class _EngineMirror:
    """This worker's engine statistics, kept in multiprocess counters and gauges."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], float] = {}
        self._engines: dict[str, int] = {}  # model → id of the engine last mirrored
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}

    def sync(self, registry: Registry) -> None:
        slots = registry.slots.statistics()
        self._set("embedloom_thread_budget", "compute threads allowed in all", "", slots.budget)
        self._set(
            "embedloom_compute_slots_held",
            "compute threads running a batch now, all models together",
            "",
            slots.held,
        )
        for model, engine in registry.engines():
            if self._engines.get(model) != id(engine):
                # Reloaded: its totals start again, and add on to what was counted.
                self._engines[model] = id(engine)
                self._seen = {k: v for k, v in self._seen.items() if k[1] != model}
            stats = engine.statistics()
            for name, documentation, value in _engine_gauges(stats):
                self._set(name, documentation, model, value)
            for name, documentation, label, value in _engine_counters(stats):
                self._add(name, documentation, model, label, value)
            for name, documentation, outcome, tenant, value in _tenant_counters(stats):
                self._add_by_tenant(name, documentation, (model, tenant, outcome), value)
            for name, documentation, snapshot in _engine_histograms(stats):
                bounds = [*(_bound_label(b) for b in snapshot.bounds), "+Inf"]
                for bound, count in zip(bounds, snapshot.counts, strict=True):
                    self._add(name + _MIRRORED_BUCKET, documentation, model, bound, count)
                self._add(name + _MIRRORED_SUM, documentation, model, "", snapshot.total)

    def _set(self, name: str, documentation: str, model: str, value: float) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            # The server's figure is the sum over the workers alive now, except
            # for a per-replica setting, which is the same in every worker.
            gauge = self._gauges[name] = Gauge(
                name,
                documentation,
                ("model",) if model else (),
                registry=None,
                multiprocess_mode="livemax" if name in _SAME_IN_EVERY_WORKER else "livesum",
            )
        (gauge.labels(model) if model else gauge).set(value)

    def _add(self, name: str, documentation: str, model: str, label: str, total: float) -> None:
        """Counters only go up: add what the total grew by since the last sync."""
        counter = self._counters.get(name)
        if counter is None:
            labels = ("model", "le") if name.endswith(_MIRRORED_BUCKET) else ("model", "outcome")
            counter = self._counters[name] = Counter(
                name, documentation, labels if label else ("model",), registry=None
            )
        # labels() creates the series at 0, so every bucket is listed from the start.
        series = counter.labels(model, label) if label else counter.labels(model)
        grown = total - self._seen.get((name, model, label), 0.0)
        if grown > 0:
            series.inc(grown)
            self._seen[(name, model, label)] = total

    def _add_by_tenant(
        self, name: str, documentation: str, labels: tuple[str, str, str], total: float
    ) -> None:
        counter = self._counters.get(name)
        if counter is None:
            names = ("model", "tenant", "outcome") if labels[2] else ("model", "tenant")
            counter = self._counters[name] = Counter(name, documentation, names, registry=None)
        series = counter.labels(*labels) if labels[2] else counter.labels(*labels[:2])
        key = (name, labels[0], f"{labels[1]}/{labels[2]}")
        grown = total - self._seen.get(key, 0.0)
        if grown > 0:
            series.inc(grown)
            self._seen[key] = total


class _Reassembled(Collector):
    """The multiprocess collector's output, with mirrored histograms made whole again."""

    def __init__(self, source: Collector) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        buckets: dict[str, dict[str, dict[str, float]]] = {}  # name → model → le → count
        sums: dict[str, dict[str, float]] = {}
        documentation: dict[str, str] = {}
        for family in self._source.collect():
            if family.name.endswith(_MIRRORED_BUCKET):
                name = family.name.removesuffix(_MIRRORED_BUCKET)
                documentation[name] = family.documentation
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        model, le = sample.labels["model"], sample.labels["le"]
                        by_bound = buckets.setdefault(name, {}).setdefault(model, {})
                        by_bound[le] = by_bound.get(le, 0.0) + sample.value
            elif family.name.endswith(_MIRRORED_SUM):
                name = family.name.removesuffix(_MIRRORED_SUM)
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        model = sample.labels["model"]
                        model_sums = sums.setdefault(name, {})
                        model_sums[model] = model_sums.get(model, 0.0) + sample.value
            else:
                yield family
        for name, bucket_counts in buckets.items():
            family = HistogramMetricFamily(name, documentation[name], labels=("model",))
            for model, by_bound in bucket_counts.items():
                ordered = sorted(by_bound.items(), key=lambda item: float(item[0]))
                running = 0.0
                cumulative = []
                for bound, count in ordered:
                    running += count
                    cumulative.append((bound, running))
                family.add_metric((model,), cumulative, sums.get(name, {}).get(model, 0.0))
            yield family
