"""Prometheus metrics: HTTP counters kept here, engine figures read from ``statistics()``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from embedloom._version import __version__
from embedloom.engine import Engine, ModelInfo
from embedloom.stats import HistogramSnapshot

__all__ = ["ServerMetrics"]

_REQUEST_SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """A registry per app, so several servers in one process (tests) never collide."""

    def __init__(self, engine: Engine) -> None:
        # ``*_created`` series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "embedloom_http_requests",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self._durations = Histogram(
            "embedloom_http_request_duration_seconds",
            "HTTP request durations, from first byte in to last byte out",
            ("route",),
            buckets=_REQUEST_SECONDS_BOUNDS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._durations.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _info_or_none(engine: Engine) -> ModelInfo | None:
    try:
        return engine.model_info
    except Exception:
        return None


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(
        self,
    ) -> Iterator[
        GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily | InfoMetricFamily
    ]:
        stats = self._engine.statistics()
        info = _info_or_none(self._engine)
        build = {"version": __version__, "state": stats.state, "strategy": stats.worker.strategy}
        if info is not None:
            build |= {"model": info.model_id, "backend": info.backend}
        yield InfoMetricFamily("embedloom_build", "the server and its model", value=build)
        yield _gauge("embedloom_queue_size", "inputs waiting for a batch", stats.queued_inputs)
        yield _gauge(
            "embedloom_admitted_inputs", "inputs admitted: queued + running", stats.admitted_inputs
        )
        yield _gauge("embedloom_max_queued_inputs", "the admission bound", stats.max_queued_inputs)
        yield _gauge(
            "embedloom_running_batches", "batches handed to the model", stats.running_batches
        )
        worker = stats.worker
        yield _gauge(
            "embedloom_inference_threads", "threads calling the model", worker.inference_threads
        )
        yield _gauge("embedloom_replicas", "model instances", worker.replicas)
        yield _gauge(
            "embedloom_threads_per_replica",
            "intra-op threads per replica, as the backend reports",
            worker.threads_per_replica,
        )
        yield _gauge(
            "embedloom_thread_budget", "compute threads allowed in all", self._engine.sharing.budget
        )
        yield _gauge(
            "embedloom_busy_inference_threads", "inference threads running a batch", worker.busy
        )
        requests = CounterMetricFamily(
            "embedloom_engine_requests", "engine requests by outcome", labels=("outcome",)
        )
        for outcome, count in (
            ("admitted", stats.requests_admitted),
            ("completed", stats.requests_completed),
            ("failed", stats.requests_failed),
            ("rejected", stats.requests_rejected),
            ("cancelled", stats.requests_cancelled),
        ):
            requests.add_metric((outcome,), count)
        yield requests
        for name, help_text, value in (
            ("embedloom_inputs_embedded", "inputs embedded", stats.inputs_embedded),
            ("embedloom_inputs_dropped", "inputs dropped: their caller left", stats.inputs_dropped),
            ("embedloom_batches", "batches run by the model", stats.batches_run),
            ("embedloom_input_tokens", "tokens of all inputs", stats.input_tokens),
            ("embedloom_padded_tokens", "tokens run, padding included", stats.padded_tokens),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        for name, help_text, snapshot in (
            ("embedloom_batch_size", "inputs per batch", stats.batch_size),
            ("embedloom_batch_tokens", "padded tokens per batch", stats.batch_tokens),
            ("embedloom_input_length_tokens", "tokens per input", stats.input_length),
            ("embedloom_queue_duration_seconds", "wait per input", stats.queue_seconds),
            ("embedloom_inference_duration_seconds", "time per batch", stats.inference_seconds),
        ):
            yield _histogram(name, help_text, snapshot)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    cumulative = []
    running = 0
    for bound, count in zip(snapshot.bounds, snapshot.counts, strict=False):
        running += count
        cumulative.append((_bound_label(bound), running))
    cumulative.append(("+Inf", snapshot.count))
    return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=snapshot.total)


def _bound_label(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)
