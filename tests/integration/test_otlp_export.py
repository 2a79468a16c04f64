"""MODSERVE_OTEL_ENDPOINT end to end: a served request's spans arrive at an OTLP/HTTP
collector (a stand-in HTTP server that decodes what a real collector would receive)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, free_port

trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")


RECEIVED: list[bytes] = []  # request bodies POSTed to /v1/traces


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/v1/traces":
            RECEIVED.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_an_otlp_collector(tiny_repo: Path) -> None:
    port = free_port()
    collector = ThreadingHTTPServer(("127.0.0.1", port), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    s = ServerProcess(
        tiny_repo,
        MODSERVE_OTEL_ENDPOINT=f"http://127.0.0.1:{port}/v1/traces",
        MODSERVE_OTEL_SERVICE_NAME="modserve-test",
    )
    try:
        s.wait_ready()
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        r = httpx.post(
            s.base + "/v1/moderations",
            json={"input": ["hello there"]},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert r.status_code == 200
        spans, services = {}, set()
        deadline = time.monotonic() + 20  # the batch processor exports every 5 s
        while time.monotonic() < deadline and "modserve.classify" not in spans:
            for body in list(RECEIVED):
                req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    services |= {a.value.string_value for a in rs.resource.attributes
                                 if a.key == "service.name"}  # fmt: skip
                    for ss in rs.scope_spans:
                        spans.update({sp.name: sp for sp in ss.spans})
            time.sleep(0.2)
    finally:
        s.stop()
        collector.shutdown()
    assert services == {"modserve-test"}
    assert {"modserve.classify", "modserve.tokenize", "modserve.forward"} <= set(spans)
    assert spans["modserve.classify"].trace_id.hex() == trace_id  # joined the caller's trace
