"""Optional OpenTelemetry tracing (serving/tracing.py): spans for a classification, joined to
the caller's trace; nothing at all while it is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import tracing
from serving.api.request_id import RequestIdMiddleware
from tests.unit.engine.test_engine import started

memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[Any]:
    exporter = memory.InMemorySpanExporter()
    assert tracing.configure("", exporter=exporter)
    yield exporter
    tracing.reset()


async def test_a_classification_is_one_span_with_its_stages(tiny_repo: Path, spans: Any):
    engine = await started(tiny_repo)
    try:
        await engine.classify(["hello there", "x " * 100])
    finally:
        await engine.stop()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    root = by_name["modserve.classify"]
    assert root.attributes["modserve.model"] == "tiny"
    assert root.attributes["modserve.inputs"] == 2 and root.attributes["modserve.tokens"] > 0
    stages = [by_name[f"modserve.{s}"] for s in ("tokenize", "queue", "forward", "post")]
    for s in stages:
        assert s.parent.span_id == root.context.span_id
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time
    assert [s.start_time for s in stages] == sorted(s.start_time for s in stages)


def test_off_means_no_tracer_and_no_spans():
    tracing.reset()
    assert not tracing.configure("")  # no endpoint: stays off
    assert not tracing.enabled()
    tracing.record_classify("m", 0, {"tokenize": 0.1}, {})  # a no-op, never an error
    assert tracing.attach_caller({"traceparent": PARENT}) is None


async def test_a_callers_traceparent_makes_the_spans_part_of_its_trace(spans: Any):
    async def app(scope: dict, receive: Any, send: Any) -> None:
        tracing.record_classify("m", 0, {"forward": 0.0}, {"inputs": 1})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/moderations",
             "headers": [(b"traceparent", PARENT.encode())]}  # fmt: skip
    await RequestIdMiddleware(app, log_access=False)(scope, None, send)
    finished = spans.get_finished_spans()
    assert finished and {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    assert sent[0]["status"] == 200
