"""Prometheus metrics (names follow TEI's spirit): the engine records the queue, batches,
model time and drops (its batch loop and core); the transports record requests and failures.

Each server owns a ``Metrics`` with its own registry, so several engines in one
process (tests, benchmarks) never collide.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "modserve_requests", "Moderation requests received", ["model"], registry=r
        )
        self.request_failures = Counter(
            "modserve_request_failures", "Requests answered with an error", ["err"], registry=r
        )
        self.inputs = Counter("modserve_inputs", "Input texts classified", ["model"], registry=r)
        self.request_duration = Histogram(
            "modserve_request_duration_seconds",
            "End-to-end request latency, every answer (errors too)",
            ["model", "protocol", "status"],  # protocol: openai | kserve | grpc-moderation |
            buckets=_LATENCY_BUCKETS_S,  # grpc-kserve; status: HTTP code or gRPC code name
            registry=r,
        )
        self.queue_duration = Histogram(
            "modserve_queue_duration_seconds",
            "Time a sequence waited in the batcher",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_duration = Histogram(
            "modserve_inference_duration_seconds",
            "Model forward time per batch",
            ["model", "bucket"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokenization_duration = Histogram(
            "modserve_tokenization_duration_seconds",
            "Tokenization time per request",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "modserve_batch_size",
            "Sequences per forward pass",
            ["model", "bucket"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "modserve_batch_padded_tokens",
            "Padded tokens per forward pass (bucket_len x n)",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.real_tokens = Counter(
            "modserve_tokens_real", "Non-padding tokens run by the model", ["model"], registry=r
        )
        self.padded_tokens = Counter(
            "modserve_tokens_padded",
            "Tokens run by the model including padding",
            ["model"],
            registry=r,
        )
        self.queue_tokens = Gauge(
            "modserve_queue_tokens", "Padded tokens waiting in the batcher", ["model"], registry=r
        )
        self.queue_sequences = Gauge(
            "modserve_queue_sequences", "Sequences waiting", ["model"], registry=r
        )
        self.dropped = Counter(
            "modserve_dropped_sequences",
            "Sequences dropped before the model",
            ["model", "reason"],
            registry=r,
        )
        # serving.gateway.audit: decisions written to the audit sink, dropped because it fell
        # behind (the queue was full), lost because the sink raised
        self.audit_written = Counter("modserve_audit_written", "Audit records written", registry=r)
        self.audit_dropped = Counter(
            "modserve_audit_dropped", "Audit records dropped: the sink fell behind", registry=r
        )
        self.audit_errors = Counter(
            "modserve_audit_errors", "Audit records lost to sink errors", registry=r
        )
        self.cache_lookups = Counter(
            "modserve_cache_lookups",
            "Inputs looked up in the response cache (MODSERVE_CACHE_BYTES)",
            ["model", "result"],  # result: hit | miss
            registry=r,
        )
        self.cache_evictions = Counter(
            "modserve_cache_evictions",
            "Response-cache entries evicted (least recently used) to stay within its bound",
            ["model"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "modserve_cache_bytes", "Memory held by the response cache", ["model"], registry=r
        )
        self.backend = Gauge(
            "modserve_model_backend_info",
            "1 for the backend and dtype serving each model (chosen at start, "
            "serving.model.backend_choice)",
            ["model", "backend", "dtype"],
            registry=r,
        )
        self.backend_probe = Gauge(
            "modserve_backend_probe_tokens_per_second",
            "Model-core tokens/s of every candidate timed at start (32x64 tokens)",
            ["model", "backend", "dtype"],
            registry=r,
        )
        self.ready = Gauge("modserve_ready", "1 when every model is loaded and warmed", registry=r)
        ProcessCollector(registry=r)  # process_*: CPU seconds, RSS, open fds, start time
        PlatformCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
