"""The gRPC transport: one grpc.aio server on ``settings.grpc_port`` with

- ``inference.GRPCInferenceService`` (KServe v2 / Triton; serving/rpc/kserve.py),
- ``modserve.v1.Moderation`` (serving/rpc/moderation.py),
- ``grpc.health.v1.Health``: NOT_SERVING until every model is loaded and warmed,
  then SERVING (overall "" and per service), NOT_SERVING again on shutdown.

The composition root (serving/app.py) runs it beside the HTTP server, in the same event
loop and over the same registry: ``grpc_serving(settings, registry)``. Largest
message in or out: ``MODSERVE_MAX_REQUEST_BODY_BYTES``; calls in progress at once:
``MODSERVE_GRPC_MAX_CONCURRENT_RPCS`` (beyond it RESOURCE_EXHAUSTED); a request that is not
valid protobuf gets INVALID_ARGUMENT (``rpc/interceptors.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from serving.config import Settings
from serving.engine.types import Registry
from serving.rpc.interceptors import MalformedRequestInterceptor
from serving.rpc.kserve import KServeServicer

log = logging.getLogger(__name__)

KSERVE_SERVICE_NAME = "inference.GRPCInferenceService"
SHUTDOWN_GRACE_S = 5.0
METADATA_BYTES = 16384  # headers + metadata per call (gRPC's default soft limit is 8 KiB)
IDLE_CONNECTION_MS = 300_000  # connections with no call for this long are closed
READY_POLL_S = 0.1


def build_server(settings: Settings, registry: Registry) -> tuple[Any, Any, list[str]]:
    """(server, health servicer, service names); the moderation stubs are imported here."""
    from serving.rpc import moderation as grpc_moderation

    limit = settings.max_request_body_bytes
    server = grpc.aio.server(
        interceptors=[MalformedRequestInterceptor(registry.metrics)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on a busy port fails to start
            ("grpc.max_metadata_size", METADATA_BYTES),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(registry), server)
    grpc_moderation.add_to_server(grpc_moderation.ModerationServicer(registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer, ["", KSERVE_SERVICE_NAME, grpc_moderation.SERVICE_NAME]


async def _set_health(health_servicer: Any, services: list[str], status: Any) -> None:
    for name in services:
        await health_servicer.set(name, status)


async def _serving_when_ready(
    registry: Registry, health_servicer: Any, services: list[str]
) -> None:
    while not registry.ready:
        await asyncio.sleep(READY_POLL_S)
    await _set_health(health_servicer, services, health_pb2.HealthCheckResponse.SERVING)


@asynccontextmanager
async def grpc_serving(settings: Settings, registry: Registry) -> AsyncIterator[Any]:
    """Serve gRPC for the duration of the block; ``settings.grpc_port == 0`` turns it off."""
    if settings.grpc_port <= 0:
        yield None
        return
    server, health_servicer, services = build_server(settings, registry)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as e:  # grpc's "Failed to bind": another process holds the port
        raise OSError(
            f"cannot listen for gRPC on {host}:{settings.grpc_port} (MODSERVE_GRPC_PORT): {e}"
        ) from None
    await _set_health(health_servicer, services, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("gRPC listening on %s:%d", host, settings.grpc_port)
    watcher = asyncio.create_task(_serving_when_ready(registry, health_servicer, services))
    try:
        yield server
    finally:
        watcher.cancel()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_S)
