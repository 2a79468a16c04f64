"""Optional OpenTelemetry tracing: one span per classification with its stages as children.

Off unless ``MODSERVE_OTEL_ENDPOINT`` is set (an OTLP/HTTP traces URL, e.g.
``http://otel-collector:4318/v1/traces``) and the packages are installed
(``pip install 'modserve[otel]'``); off, it costs one boolean check per request.

* ``modserve.classify`` (model, inputs, tokens, cached inputs) with children
  ``modserve.tokenize``, ``modserve.queue``, ``modserve.forward`` and ``modserve.post``,
  timed from what the engine measured (a forward serves a whole batch: its span is the
  batch's forward this request waited for).
* A W3C ``traceparent`` header on an HTTP request makes these spans part of the caller's
  trace (``attach_caller``, used by the request middleware).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None  # an opentelemetry Tracer once configured


def enabled() -> bool:
    return _tracer is not None


def configure(endpoint: str, service_name: str = "modserve", exporter: Any = None) -> bool:
    """Start exporting spans to ``endpoint`` (or to ``exporter``, e.g. in tests); False (and
    one warning) if the OpenTelemetry packages are missing."""
    global _tracer
    if not endpoint and exporter is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
            processor: Any = BatchSpanProcessor(exporter)
        else:
            processor = SimpleSpanProcessor(exporter)
    except ImportError as e:
        log.warning("MODSERVE_OTEL_ENDPOINT is set but %s is not installed: tracing stays "
                    "off (pip install 'modserve[otel]')", e.name)  # fmt: skip
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    _tracer = provider.get_tracer("modserve")
    log.info("tracing to %s", endpoint or type(exporter).__name__)
    return True


def reset() -> None:
    global _tracer
    _tracer = None


def attach_caller(headers: Mapping[str, str]) -> Any:
    """Make the caller's trace (W3C ``traceparent``/``tracestate`` headers) current for this
    request; returns a token for :func:`detach` (None when off or no trace was sent)."""
    if _tracer is None or "traceparent" not in headers:
        return None
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return context.attach(TraceContextTextMapPropagator().extract(carrier=dict(headers)))


def detach(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def record_classify(
    model: str,
    started_ns: int,
    stages_s: Mapping[str, float],
    attributes: Mapping[str, int | str],
) -> None:
    """Emit ``modserve.classify`` from ``started_ns`` (``time.time_ns()``) to now, with one
    child per stage laid end to end (``stages_s``: tokenize, queue, forward, post seconds)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    end_ns = time.time_ns()
    span = _tracer.start_span("modserve.classify", start_time=started_ns)
    span.set_attribute("modserve.model", model)
    for k, v in attributes.items():
        span.set_attribute(f"modserve.{k}", v)
    ctx = trace.set_span_in_context(span)
    t = started_ns
    for stage, seconds in stages_s.items():
        stop = min(end_ns, t + int(max(0.0, seconds) * 1e9))
        _tracer.start_span(f"modserve.{stage}", context=ctx, start_time=t).end(end_time=stop)
        t = stop
    span.end(end_time=end_ns)
