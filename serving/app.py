"""The composition root: one registry of engines, and the transports over it as siblings.

::

    ModelRegistry (engine/registry.py)   loads and warms every configured model
      ├── HTTP: api/http.py (OpenAI + KServe v2 routes), served by uvicorn on MODSERVE_PORT
      └── gRPC: rpc/server.py (KServe v2, modserve.v1, health) on MODSERVE_GRPC_PORT (0 = off)

Both transports answer at once (503 / NOT_SERVING) while the models load in the background,
and both are handed the same registry: nothing below this module starts a server or loads a
model on its own. ``serving/deployments.py`` is the other root, for Ray Serve: there Ray's
proxy serves HTTP and the ingress replica starts the same siblings (``ray_ingress_lifespan``).

Shutdown (SIGINT / SIGTERM): readiness answers 503 at once while requests are still served
for ``MODSERVE_DRAIN_DELAY_S``, then HTTP stops accepting and finishes its requests (up to
``MODSERVE_DRAIN_TIMEOUT_S``), gRPC gets ``SHUTDOWN_GRACE_S``, then the engines drain (queued
requests get 503) and stop. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI

from serving.api.connection_limits import guarded_protocol
from serving.api.http import Lifespan, create_http_app
from serving.config import Settings
from serving.engine.metrics import Metrics
from serving.engine.registry import ModelRegistry
from serving.engine.types import Registry
from serving.gateway.access import close_all as close_gatekeepers
from serving.rpc.server import grpc_serving

log = logging.getLogger(__name__)


@asynccontextmanager
async def models_loading(
    registry: Registry, on_failure: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Load the registry's models in the background for the duration of the block.

    A failure is kept in ``registry.load_error``: ``/health``, ``/ready`` and every model
    route answer 503 with the cause and no Retry-After (it is permanent), and ``on_failure``
    is called (the single-process server exits non-zero). The engines are stopped when the
    block ends.
    """

    async def load() -> None:
        try:
            await registry.start()
        except Exception as e:
            registry.load_error = registry.load_error or f"{type(e).__name__}: {e}"
            log.error("model loading failed: %s", registry.load_error, exc_info=e)
            if on_failure is not None:
                on_failure()

    task = asyncio.create_task(load())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registry.stop()


@asynccontextmanager
async def models_and_grpc(
    registry: Registry, on_failure: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Everything but HTTP: the models loading, and the gRPC server beside them."""
    try:
        async with models_loading(registry, on_failure), grpc_serving(registry.settings, registry):
            yield
    finally:
        close_gatekeepers()  # the audit log writes what it still holds


def ray_ingress_lifespan(registry: Registry) -> Lifespan:
    """``models_and_grpc`` as the HTTP app's lifespan: on Ray Serve the proxy serves HTTP and
    runs the ingress app's lifespan, so that is where the siblings start."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with models_and_grpc(registry):
            yield

    return lifespan


class _HttpServer(uvicorn.Server):
    """uvicorn, minus its signal handling: :func:`serve` owns the signals, so that the gRPC
    server and the engines shut down after HTTP instead of being killed by a re-raised
    SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings) -> int:
    """Run the single-process server until SIGINT / SIGTERM (exit status 0), or until a
    model fails to load (1: the cause is logged; a supervisor sees a crash, not a live
    process that can never serve)."""
    registry = ModelRegistry(settings, Metrics())
    http = _HttpServer(
        uvicorn.Config(
            create_http_app(registry),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,  # modserve's own (serving/api/request_id.py) has more
            log_config=None,  # the process's logging (serving/logs.py), one format
            timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
            lifespan="off",
            http=guarded_protocol(settings),
        )
    )
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    async def drain(sig: int) -> None:
        registry.draining = True  # /ready -> 503 at once; requests are still served
        log.info("shutting down: readiness 503 for %.1f s, then in-flight work finishes",
                 settings.drain_delay_s)  # fmt: skip
        await asyncio.sleep(settings.drain_delay_s)
        http.handle_exit(sig, None)

    def on_signal(sig: int) -> None:
        if draining:  # a second signal: stop now
            http.handle_exit(sig, None)
        else:
            draining.append(loop.create_task(drain(sig)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with models_and_grpc(registry, on_failure=lambda: http.handle_exit(signal.SIGTERM, None)):
        await http.serve()
    return 1 if registry.load_error else 0


def run(settings: Settings) -> int:
    """``serve``; a port that cannot be bound is a one-line error and exit status 1."""
    try:
        return asyncio.run(serve(settings))
    except OSError as e:
        log.error("%s", e)
        return 1
