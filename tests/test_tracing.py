"""OpenTelemetry spans: per request and stage, continuing traceparent, batches linked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from embedloom import tracing
from tests.fakes import FakeBackend
from tests.test_server_unit import serving

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.use_tracer(None)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_a_request_span_continues_traceparent_with_its_stages_and_linked_batch(
    exported: InMemorySpanExporter,
) -> None:
    async with serving(FakeBackend()) as served:
        exported.clear()  # the warm-up and start-up
        reply = await served.client.post(
            "/v1/embeddings",
            json={"input": ["a", "bb"]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert reply.status_code == 200
    spans = exported.get_finished_spans()
    [request] = by_name(spans, "POST /v1/embeddings")
    assert request.kind is SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == PARENT_ID
    for stage in ("embedloom.tokenize", "embedloom.queue", "embedloom.inference"):
        [child] = by_name(spans, stage)
        assert child.parent is not None
        assert child.parent.span_id == request.context.span_id, stage
        assert child.context.trace_id == request.context.trace_id
    [batch] = by_name(spans, "embedloom.batch")
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    assert batch.attributes is not None
    assert batch.attributes["embedloom.batch_inputs"] == 2


async def test_tracing_off_makes_no_spans(exported: InMemorySpanExporter) -> None:
    tracing.use_tracer(None)
    async with serving(FakeBackend()) as served:
        assert (await served.client.post("/embed", json={"inputs": "x"})).status_code == 200
    assert exported.get_finished_spans() == ()
    assert not tracing.enabled()
