"""Ray Serve glue only: an HTTP ingress (the same FastAPI app) + one classifier deployment per
model, each replica running the same ``Engine`` as the single-process server.

Use it three ways:

* ``modserve serve --ray`` (starts or joins Ray and runs the app),
* ``serve run serving.deployments:build_app`` / ``serve deploy serve_config.yaml``,
* KubeRay: the Helm chart embeds the same Serve config (``serveConfigV2``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serving.api.http import create_http_app
from serving.app import ray_ingress_lifespan
from serving.config import RayServeSettings, Settings
from serving.engine.ensemble import EnsembleConfig, EnsembleEngine, plan_models
from serving.engine.metrics import Metrics
from serving.engine.ray_metrics import RayMetricsMirror
from serving.engine.registry import build_engine, resolve_engine
from serving.engine.types import ClassifyResult
from serving.errors import ModerationError, NotReady, Overloaded

log = logging.getLogger(__name__)


class ClassifierReplica:
    """One model, one engine, one batcher. Many concurrent calls feed one batcher."""

    def __init__(self, model_name: str, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        self.model_name = model_name
        self.engine = build_engine(self.settings.model_repo / model_name, self.settings, Metrics())
        self._started: asyncio.Task[None] | None = None
        self._mirror: asyncio.Task[None] | None = None

    async def _ensure_started(self) -> None:
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._started = loop.create_task(self.engine.start())
            # this replica's engine metrics reach Prometheus through Ray's metrics agent
            self._mirror = loop.create_task(RayMetricsMirror(self.engine.metrics.registry).run())
        await asyncio.shield(self._started)

    async def ready(self) -> tuple[list[str], str, dict[str, str]]:
        """Once warm: (categories, version, label_map) for the ingress's ``RemoteEngine``."""
        await self._ensure_started()
        return self.engine.categories, self.engine.version, self.engine.label_map

    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        await self._ensure_started()
        return await self.engine.classify(texts, timeout_s)

    async def check_health(self) -> None:
        if self._started is not None and self._started.done() and self._started.exception():
            raise RuntimeError("engine failed to start")


class RemoteEngine:
    """A ``Classifier`` for the ingress's transports; forwards to a classifier deployment."""

    def __init__(
        self,
        name: str,
        handle: DeploymentHandle,
        categories: list[str],
        version: str,
        label_map: dict[str, str],
    ) -> None:
        self.name = name
        self.handle = handle
        self.categories = categories
        self.version = version
        self.label_map = label_map
        self.ready = True

    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        """Forward to a replica. Classification has no side effects, so a request whose
        replica died under it is sent once more: the router picks a live replica (the dead
        one is out of its set), and a replica crash costs no request while another lives."""
        try:
            return await self._call(texts, timeout_s)
        except (RayActorError, ActorUnavailableError):
            log.warning("a %s replica died under a request; retrying on another", self.name)
        try:
            return await self._call(texts, timeout_s)
        except (RayActorError, ActorUnavailableError):
            raise NotReady(f"The {self.name!r} replica is restarting; retry shortly.") from None

    async def _call(self, texts: list[str], timeout_s: float | None) -> ClassifyResult:
        try:
            return await self.handle.classify.remote(texts, timeout_s)
        except BackPressureError:
            raise Overloaded(
                "Every replica is busy and the router queue is full; retry after "
                "the Retry-After delay."
            ) from None
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ModerationError):
                raise cause from None
            raise


class RemoteRegistry:
    """A ``Registry`` over deployment handles: model-name resolution on the ingress."""

    def __init__(
        self,
        settings: Settings,
        deployments: dict[str, str],
        ensembles: dict[str, EnsembleConfig] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.deployments = deployments  # model name -> classifier deployment name
        self.ensembles = ensembles or {}
        self.engines: dict[str, RemoteEngine | EnsembleEngine] = {}
        self.default = settings.model
        self.created = int(time.time())
        self.load_error: str | None = None
        self.draining = False

    @property
    def ready(self) -> bool:
        return bool(self.engines) and len(self.engines) == len(self.deployments) + len(
            self.ensembles
        )

    async def start(self) -> None:
        app_name = serve.get_replica_context().app_name
        for name, deployment in self.deployments.items():
            handle = serve.get_deployment_handle(deployment, app_name=app_name)
            categories, version, label_map = await handle.ready.remote()
            self.engines[name] = RemoteEngine(name, handle, categories, version, label_map)
        for name, cfg in self.ensembles.items():
            self.engines[name] = EnsembleEngine(cfg, {m: self.engines[m] for m in cfg.members})
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.metrics.ready.set(0)

    def resolve(
        self, requested: str | None, version: str | None = None
    ) -> RemoteEngine | EnsembleEngine:
        expected = [*self.deployments, *self.ensembles]
        return resolve_engine(
            requested, self.default, self.engines, expected, version, self.load_error
        )


def deployment_name(model: str) -> str:
    return f"classifier-{model}"


class Ingress:
    """The HTTP entry: ``serve.ingress`` wraps it with the FastAPI app built on the replica.

    The bound classifier deployments arrive as constructor arguments so that they belong to
    the same Serve application; the app reaches them by name through ``RemoteRegistry``.
    """

    def __init__(self, **classifiers: DeploymentHandle) -> None:
        self.classifiers = classifiers


def _ingress_builder(settings: dict[str, Any]) -> Callable[[], FastAPI]:
    def build() -> FastAPI:
        s = Settings(**settings)
        plain, ensembles = plan_models(s.model_names(), s.model_repo)
        registry = RemoteRegistry(s, {m: deployment_name(m) for m in plain}, ensembles)
        return create_http_app(registry, lifespan=ray_ingress_lifespan(registry))

    return build


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve application builder (``import_path: serving.deployments:build_app``).

    ``args`` may hold any ``Settings`` field (e.g. ``model``, ``extra_models``,
    ``max_batch_tokens``) and a ``ray`` dict of ``RayServeSettings`` fields; the
    rest comes from ``MODSERVE_*`` / ``MODSERVE_RAY_*`` environment variables.
    """
    args = dict(args or {})
    ray_cfg = RayServeSettings(**{k: v for k, v in args.pop("ray", {}).items() if k != "address"})
    settings = Settings(**args)
    plain = settings.model_dump(mode="json")
    classifiers: dict[str, Any] = {}
    plain_models, _ = plan_models(settings.model_names(), settings.model_repo)
    for name in plain_models:
        deployment = serve.deployment(
            name=deployment_name(name),
            ray_actor_options={
                "num_gpus": ray_cfg.num_gpus_per_replica,
                "num_cpus": ray_cfg.num_cpus_per_replica,
            },
            max_ongoing_requests=ray_cfg.max_ongoing_requests,
            max_queued_requests=ray_cfg.max_queued_requests,
            autoscaling_config={
                "min_replicas": ray_cfg.min_replicas,
                "initial_replicas": max(1, ray_cfg.min_replicas),
                "max_replicas": ray_cfg.max_replicas,
                "target_ongoing_requests": ray_cfg.target_ongoing_requests,
                "upscale_delay_s": ray_cfg.upscale_delay_s,
                "downscale_delay_s": ray_cfg.downscale_delay_s,
            },
            health_check_period_s=2,  # a dead replica is replaced sooner
            health_check_timeout_s=30,
        )(ClassifierReplica)
        classifiers[name.replace("-", "_")] = deployment.bind(name, plain)
    # Pinned to the nodes with the ingress resource (the chart's head, whose num-cpus is 0 so
    # that no classifier replica lands there): no CPU reserved, the resource places it.
    placement = (
        {"num_cpus": 0, "resources": {ray_cfg.ingress_resource: 0.01}}
        if ray_cfg.ingress_resource
        else {"num_cpus": 0.1}
    )
    ingress = serve.deployment(
        name="ingress",
        num_replicas=ray_cfg.ingress_replicas,
        max_ongoing_requests=ray_cfg.max_ongoing_requests * 4,
        ray_actor_options=placement,
    )(serve.ingress(_ingress_builder(plain))(Ingress))
    return ingress.bind(**classifiers)
