"""OpenTelemetry tracing: a span per request, its stages, and the batches it ran in.

Off by default, and then nothing here creates a span or reads a clock: callers
check ``enabled()`` first. ``--tracing console`` prints finished spans;
``--tracing otlp`` exports them over OTLP/HTTP (configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables); both need ``pip install embedloom[tracing]``.

The shape of a trace:
- ``POST /v1/embeddings`` (the server's span for the request, continuing an
  incoming W3C ``traceparent``), with children ``embedloom.tokenize``,
  ``embedloom.queue`` (enqueued → first batch start) and ``embedloom.inference``
  (first batch start → last row back);
- ``embedloom.batch`` spans, one per model call, on the inference thread,
  linked to the span of every request whose inputs it ran (a batch serves many
  requests, so it cannot be a child of one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

__all__ = [
    "TracingMode",
    "batch_span",
    "configure_tracing",
    "current_span_context",
    "enabled",
    "record_span",
    "request_span",
    "span",
    "use_tracer",
]

logger = logging.getLogger(__name__)

TracingMode = Literal["off", "console", "otlp"]

_tracer: Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(mode: TracingMode, *, service_name: str = "embedloom") -> None:
    """Install a tracer provider exporting as ``mode`` says ("off": none)."""
    global _tracer
    if mode == "off":
        _tracer = None
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError as exc:
        raise RuntimeError(
            "tracing needs the OpenTelemetry SDK: pip install 'embedloom[tracing]'"
        ) from exc
    exporter: SpanExporter
    if mode == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use_tracer(trace.get_tracer("embedloom"))
    logger.info("tracing on: spans exported to %s", mode)


def use_tracer(tracer: Tracer | None) -> None:
    """Trace through ``tracer`` (tests pass one over an in-memory exporter); None: off."""
    global _tracer
    _tracer = tracer


@contextmanager
def request_span(name: str, traceparent: str | None) -> Iterator[Span | None]:
    """The server's span for one request, continuing ``traceparent`` if given."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = (
        TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if traceparent
        else None
    )
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as current:
        yield current


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child of the current span, for a stage that runs here and now."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


def current_span_context() -> SpanContext | None:
    """The current span's context, to parent or link spans made later elsewhere."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def record_span(
    name: str, parent: SpanContext, started_ns: int, ended_ns: int, **attributes: Any
) -> None:
    """A child of ``parent`` for a stage already over (queue wait, inference)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    recorded = _tracer.start_span(
        name, context=context, start_time=started_ns, attributes=attributes
    )
    recorded.end(end_time=ended_ns)


@contextmanager
def batch_span(batch_id: int, inputs: int, links: Sequence[SpanContext]) -> Iterator[None]:
    """One model call, linked to the span of every request it serves."""
    if _tracer is None:
        yield
        return
    from opentelemetry.trace import Link

    with _tracer.start_as_current_span(
        "embedloom.batch",
        links=[Link(context) for context in links],
        attributes={"embedloom.batch_id": batch_id, "embedloom.batch_inputs": inputs},
    ):
        yield


def now_ns() -> int:
    return time.time_ns()
