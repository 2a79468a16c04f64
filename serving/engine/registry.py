"""The served models: one Engine per model folder, and model-name resolution for requests."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from serving.config import OPENAI_MODEL_ALIASES, Settings
from serving.engine.engine import Engine
from serving.engine.ensemble import EnsembleEngine, plan_models
from serving.engine.metrics import Metrics
from serving.engine.types import Classifier
from serving.errors import ModelLoadFailed, ModelNotFound, NotReady, clip
from serving.model.backend_choice import choose_and_load
from serving.model.cpu_layout import apply_cpu_layout

log = logging.getLogger(__name__)
C = TypeVar("C", bound=Classifier)


def build_engine(model_dir: Path, settings: Settings, metrics: Metrics) -> Engine:
    """Load ``model_dir`` as ``settings`` ask and wrap it in an Engine (not started yet).

    The one recipe for the single-process registry and a Ray classifier replica. Blocking
    (reads weights; int8 may compile): from async code run it in a thread. On CPU it first
    shares out the cores (``apply_cpu_layout``), so compiled kernels fit the layout.
    """
    device = settings.resolved_device()
    workers = apply_cpu_layout(settings) if device == "cpu" else 1
    loaded, choice = choose_and_load(model_dir, settings, device)
    return Engine(loaded, settings, metrics, core_workers=workers, choice=choice)


class ModelRegistry:
    """Every configured model (``MODSERVE_MODEL`` + ``MODSERVE_EXTRA_MODELS``) in this process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engines: dict[str, Engine | EnsembleEngine] = {}
        self.created = int(time.time())
        self.default = settings.model
        self.load_error: str | None = None
        self.draining = False
        self._all_loaded = False

    @property
    def ready(self) -> bool:
        """Every configured model is loaded and warm (not just the first ones)."""
        return self._all_loaded and all(e.ready for e in self.engines.values())

    async def start(self) -> None:
        """Load and warm every configured model (in a thread: the event loop keeps answering)."""
        repo = self.settings.model_repo
        for name in self.settings.model_names():
            if not (repo / name).is_dir():
                self.load_error = (
                    f"model directory {(repo / name).absolute()} not found; set MODSERVE_MODEL "
                    f"or MODSERVE_MODEL_REPO (run from the directory that holds model_repo/, "
                    f"or give its path)"
                )
                raise FileNotFoundError(self.load_error)
        plain, ensembles = plan_models(self.settings.model_names(), repo)
        for name in plain:
            engine = await asyncio.to_thread(build_engine, repo / name, self.settings, self.metrics)
            await engine.start()
            self.engines[name] = engine
            lm = engine.loaded
            log.info("model %s ready (%s, %s, %s)", name, lm.device, lm.backend, lm.dtype)
        for name, cfg in ensembles.items():
            self.engines[name] = EnsembleEngine(cfg, {m: self.engines[m] for m in cfg.members})
            log.info("ensemble %s ready (members %s)", name, list(cfg.members))
        self._all_loaded = True
        # Everything loaded so far (torch, transformers, the weights' Python objects) lives
        # as long as the process: keep it out of the garbage collector's full passes, which
        # otherwise stall the event loop for a few hundred ms under load.
        gc.freeze()
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.metrics.ready.set(0)
        for e in self.engines.values():
            if isinstance(e, Engine):
                await e.stop()

    def resolve(self, requested: str | None, version: str | None = None) -> Engine | EnsembleEngine:
        """Map a request's ``model`` (None, OpenAI alias, or folder name) to its engine."""
        expected = [*self.settings.model_names(), *self.engines]
        return resolve_engine(
            requested, self.default, self.engines, expected, version, self.load_error
        )


def resolve_engine(
    requested: str | None,
    default: str,
    engines: Mapping[str, C],
    expected: Iterable[str],
    version: str | None = None,
    load_error: str | None = None,
) -> C:
    """The engine for a request's ``model``: None and the OpenAI names mean ``default``.

    A configured model that is not loaded yet answers 503 (retry), or 503 with the cause
    and no retry if loading failed (``load_error``); anything else 404, as does a
    ``version`` other than the one served (empty = the one served).
    """
    name = default if requested in (None, "", *OPENAI_MODEL_ALIASES) else requested
    assert name is not None
    if name in engines:
        engine = engines[name]
        if version not in (None, "", engine.version):
            raise ModelNotFound(
                f"Model {engine.name!r} has no version {clip(version)}; served version: "
                f"{engine.version!r}.",
                param="model_version",
            )
        return engine
    expected = set(expected)
    if name in expected and load_error:
        raise ModelLoadFailed.because(load_error)
    if name in expected:
        raise NotReady(f"Model {clip(name)} is still loading; retry shortly.")
    known = sorted([*expected, *OPENAI_MODEL_ALIASES])
    raise ModelNotFound(
        f"The model {clip(requested)} does not exist. Served models: {known}.", param="model"
    )
