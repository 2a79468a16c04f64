"""Typed, validated settings: one object, read from CLI flags and ``MODSERVE_*`` env variables.

Every limit carries its unit in its name. The docstring of each field says what
it trades off, so it can be tuned without reading the code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "modserve-moderation-minilm"
GPU_BATCH_TOKENS = 16384  # max_batch_tokens=0 on a GPU
CPU_BATCH_TOKENS_PER_THREAD = 1024  # max_batch_tokens=0 on CPU: ~0.1 s int8, ~0.25 s fp32

# OpenAI model names that clients send out of habit; they all mean "the default model".
OPENAI_MODEL_ALIASES = (
    "omni-moderation-latest",
    "omni-moderation-2024-09-26",
    "text-moderation-latest",
    "text-moderation-stable",
)


def _data_home() -> Path:
    """``$XDG_DATA_HOME`` or ``~/.local/share``: where per-user state files live."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _split_csv(v: object) -> object:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


class Settings(BaseSettings):
    # An empty variable (MODSERVE_X=) means "not set": the default applies.
    model_config = SettingsConfigDict(env_prefix="MODSERVE_", extra="ignore", env_ignore_empty=True)

    # --- where and what to serve -------------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Interface to bind (HTTP and gRPC). The default keeps the server on this "
        "machine; 0.0.0.0 serves every interface (the container image and the Helm chart "
        "set it).",
    )
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (OpenAI + KServe v2 routes).")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 = off.")
    model_repo: Path = Field(Path("model_repo"), description="Directory of model folders.")
    model: str = Field(DEFAULT_MODEL_NAME, description="Default model: a folder of model_repo.")
    extra_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="More model_repo folders to load (comma separated)."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N. auto picks CUDA if any.")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = Field(
        "auto",
        description="auto = float16 on CUDA; on CPU the fastest of float32, gated int8 and "
        "gated bfloat16 (on CPUs with AVX512-BF16 / AMX-BF16; see MODSERVE_BACKEND). int8 and "
        "bfloat16 only if the model passed its accuracy gate in them.",
    )
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="Model core on CPU: auto = time every gated backend x dtype at start "
        "(MODSERVE_BACKEND_PROBE_S each) and serve the fastest; torch; onnxruntime (float32, "
        "or int8 where the model passed its gate; the graph is built on first start and "
        "cached in MODSERVE_ONNX_CACHE_DIR). CUDA: torch.",
    )
    backend_probe_s: float = Field(
        1.0,
        ge=0,
        description="Seconds of timing per candidate backend x dtype at start (best of 3 "
        "rounds at 32x64 tokens). More = a surer pick on a noisy machine, slower start; 0 = "
        "no timing (auto = torch float32).",
    )
    onnx_cache_dir: Path | None = Field(
        None,
        description="Where ONNX Runtime graphs are cached, keyed by a hash of the weights, "
        "smoothing, float layers and exporter versions; unset = $XDG_CACHE_HOME/modserve/onnx "
        "(~/.cache). Unwritable: a temporary directory, rebuilt per process.",
    )
    int8_compile: bool = Field(
        True,
        description="CPU int8 only: compile the W8A8 encoder with torch.compile (about 2x "
        "fp32; 40-110 s more start-up on 2 cores, needs g++). false = same scores at about "
        "fp32 speed.",
    )
    head_kernel: Literal["auto", "triton", "torch"] = Field(
        "auto",
        description="Classification head (pool + linear + sigmoid): auto = the fused Triton "
        "kernel on CUDA (checked once per device against torch, torch if it disagrees), torch "
        "on CPU; triton = the kernel everywhere (CPU needs TRITON_INTERPRET=1: tests only); "
        "torch = the reference everywhere.",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="torch threads per CPU worker; 0 = an equal share of the cores.",
    )
    core_thread_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="CPU priority given up by the threads that run the model (Linux nice, "
        "per thread), so that request handling (parsing, admission, fast 429s) is never "
        "starved by model work on a full machine; 0 = same priority. Model throughput is "
        "unchanged while requests are few.",
    )
    cpu_workers: int = Field(
        2,
        ge=1,
        description="CPU only: core threads, each running its own batch (capped at the "
        "cores). 1 = every core on one batch: lowest latency when idle. More = throughput "
        "when the cores are shared with HTTP and tokenizer threads (no OpenMP thread waits on "
        "a preempted sibling, one batch runs while another holds the GIL).",
    )

    # --- batching ------------------------------------------------------------------------------
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Padded tokens per forward pass (bucket_len x batch); 0 = auto: "
        f"{GPU_BATCH_TOKENS} on a GPU, {CPU_BATCH_TOKENS_PER_THREAD} per torch thread of a "
        "CPU worker. Higher = more throughput on a GPU and more latency per batch; bound by "
        "device memory. On CPU the cost per token is flat from ~256 tokens, so a bigger "
        "batch only makes every request in it (and behind it) wait longer.",
    )
    max_batch_size: int = Field(
        256, ge=1, description="Sequences per forward pass, whatever their length."
    )
    max_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long a partly filled batch waits for company. Raise for "
        "throughput under light load, lower for latency; 0 = never wait.",
    )
    max_queue_wait_s: float = Field(
        1.0,
        gt=0,
        description="Admission: a request whose predicted wait for the model (the queued "
        "work it shares the model with, at this machine's measured speed) exceeds this gets "
        "429 + Retry-After at once instead of a late 504. Lower = lower latency for what is "
        "admitted and more 429s under overload; higher = fewer 429s, longer queues.",
    )
    otel_endpoint: str = Field(
        "",
        description="OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces): one "
        "span per classification with tokenize/queue/forward/post children, joined to the "
        "caller's trace by a traceparent header. Empty = off (free). Needs "
        "pip install 'modserve[otel]'.",
    )
    otel_service_name: str = Field("modserve", description="service.name of those spans.")
    cache_bytes: int = Field(
        64 * 2**20,
        ge=0,
        description="Response cache bound, bytes (per model; 0 = off). Inputs whose text "
        "(as the tokenizer normalises it) was scored before are answered from memory, "
        "skipping the model; only a digest of the text is kept. One entry is ~250 bytes: "
        "64 MiB holds ~250,000 distinct texts. Raise it for traffic with many repeats "
        "(spam waves, retries); its hit rate is modserve_cache_lookups{result}.",
    )
    max_queue_tokens: int = Field(
        262144,
        ge=1,
        description="Absolute ceiling on padded tokens waiting (memory), on top of "
        "MODSERVE_MAX_QUEUE_WAIT_S which normally refuses work long before it; beyond it 429.",
    )

    # --- request limits ------------------------------------------------------------------------
    max_inputs_per_request: int = Field(256, ge=1, description="Items in one `input` array.")
    max_input_chars: int = Field(
        100_000, ge=1, description="Characters per input text, checked before tokenizing."
    )
    max_input_tokens: int = Field(
        8192, ge=1, description="Tokens per input text; longer texts are chunked up to this cap."
    )
    max_request_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest HTTP body accepted; beyond it 413."
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline per request, also the cap on a client's own (gRPC) deadline; "
        "expired requests never reach the model, and a request that needs more model time "
        "than this even on an idle server gets 413 at once.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 429 and 503.")

    # --- connection limits (what a hostile or broken client can hold) -------------------------
    http_max_header_bytes: int = Field(
        65536, ge=1024, description="Request line + headers, in bytes; beyond it 431."
    )
    http_max_headers: int = Field(100, ge=8, description="Header fields per request; beyond 431.")
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time for a request line + headers to arrive (from the connection or the "
        "request's first byte); beyond it 408 and the connection closes (slowloris).",
    )
    http_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Time for a whole request body to arrive after its headers; beyond it 408. "
        "Raise for very slow client links.",
    )
    http_max_connections: int = Field(
        1024,
        ge=1,
        description="Open HTTP connections; a new one beyond it gets 503 and is closed.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024,
        ge=1,
        description="gRPC calls in progress at once; beyond it RESOURCE_EXHAUSTED at once.",
    )

    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, readiness answers 503 for this long while requests are still "
        "served, so load balancers stop sending before the listener closes (Kubernetes: a few "
        "seconds, as the Helm chart sets).",
    )
    drain_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Then in-flight HTTP requests get this long to finish before the process "
        "exits anyway.",
    )

    # --- security & ops ------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Static bearer keys (comma separated); empty = no auth."
    )
    policy_file: Path | None = Field(
        None,
        description="Policy file (YAML): projects, their models, thresholds, quotas, audit "
        "text retention (README: Projects, keys and quotas). Set, keys come from the key "
        "store and belong to projects; MODSERVE_API_KEYS still work (project 'default').",
    )
    key_store: Path = Field(
        default_factory=lambda: _data_home() / "modserve" / "keys.db",
        description="SQLite file of hashed API keys (`modserve keys create|list|revoke`); "
        "several server processes on one host may share it. Used with MODSERVE_POLICY_FILE.",
    )
    key_cache_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a key lookup is cached in memory: a revoked key stops working "
        "within this time. 0 = read the store on every request.",
    )
    evaluate_max_chars: int = Field(
        5000,
        ge=1,
        description="Characters per prompt and per response of /v1/evaluate/toxicity; longer "
        "is a 400 naming the field and this limit. An item costs the models about twice the "
        "response plus the prompt, in tokens.",
    )
    audit_log: str = Field(
        "",
        description="Decision audit log: jsonl:PATH (rotating JSON lines), sqlite:PATH, or "
        "empty = off. One record per decision, written off the request path; records the "
        "sink cannot keep up with are dropped and counted (modserve_audit_dropped). "
        "`modserve audit summary` reads it.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (comma separated, * = any); "
        "empty = no CORS headers (browsers on other origins are refused).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug | info | warning | error | critical"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text | json (one object per line), for the app and uvicorn alike."
    )
    access_log: bool = Field(
        True,
        description="One INFO line per HTTP request (method, path, status, latency, request "
        "id, model, inputs, tokens; never text) on the modserve.access logger.",
    )

    _split = field_validator("extra_models", "api_keys", "cors_origins", mode="before")(_split_csv)
    _lower = field_validator("log_level", mode="before")(
        lambda v: v.lower() if isinstance(v, str) else v
    )

    def model_names(self) -> list[str]:
        return [self.model, *[m for m in self.extra_models if m != self.model]]

    def resolved_max_batch_tokens(
        self, device: str, threads_per_worker: int, largest_bucket: int = 1
    ) -> int:
        """``max_batch_tokens``, or its device default when 0 (see the field), raised to
        hold one sequence of ``largest_bucket``. An explicit value is returned as set: one
        below the largest bucket is the batcher's error to report."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        if device == "cpu":
            auto = CPU_BATCH_TOKENS_PER_THREAD * max(1, threads_per_worker)
        else:
            auto = GPU_BATCH_TOKENS
        return max(auto, largest_bucket)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class RayServeSettings(BaseSettings):
    """Scaling knobs for ``modserve serve --ray`` (env ``MODSERVE_RAY_*``).

    One classifier replica = one engine = one batcher; the replica count times
    ``max_batch_tokens`` is the fleet's batch capacity.
    """

    model_config = SettingsConfigDict(env_prefix="MODSERVE_RAY_", extra="ignore")

    address: str = Field("", description="Ray cluster address; empty starts a local Ray.")
    num_gpus_per_replica: float = Field(
        0.0, ge=0, description="GPUs per classifier replica; fractions let small models share."
    )
    num_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs per classifier replica.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling floor (0 = scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Autoscaling ceiling per model.")
    target_ongoing_requests: float = Field(
        32.0,
        gt=0,
        description="Requests in flight per replica the autoscaler aims for. Lower "
        "scales out sooner (latency), higher packs bigger batches (throughput).",
    )
    max_ongoing_requests: int = Field(
        512,
        ge=1,
        description="Requests one replica accepts at once. Keep it above "
        "max_batch_size so Ray never caps the batcher's batch size.",
    )
    max_queued_requests: int = Field(
        2048, ge=-1, description="Requests waiting at the router; beyond it 429 (-1 = no cap)."
    )
    upscale_delay_s: float = Field(10.0, ge=0, description="Sustained load before scaling out.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Idle time before scaling in.")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas.")
    ingress_resource: str = Field(
        "",
        description="Custom Ray resource the ingress replicas require (0.01 each), so they run "
        "only on nodes that advertise it. The gRPC server runs beside each ingress replica: "
        "the Helm chart gives the resource to the head pod only, so gRPC listens there and "
        "its Service targets that pod. Empty = any node.",
    )
