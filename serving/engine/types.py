"""The two contracts the transports are written against, and the result they get back.

* :class:`Classifier`: one served model, local (``Engine``), combined (``EnsembleEngine``)
  or remote (``deployments.RemoteEngine``, a Ray Serve handle).
* :class:`Registry`: the served models by name (``ModelRegistry`` in one process,
  ``deployments.RemoteRegistry`` on Ray Serve); model-name resolution for requests.

The HTTP routes (``serving/api``) and gRPC servicers (``serving/rpc``) only ever see these,
so every implementation is interchangeable under them; mypy checks that each one fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.config import Settings
from serving.engine.metrics import Metrics
from serving.errors import ModelLoadFailed, ModerationError, NotReady


@dataclass
class Timings:
    """Where one request's time went (seconds), and its size; sent as ``x-*`` headers."""

    tokenization_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0  # model tokens computed for this request (cached inputs cost none)
    characters: int = 0
    cached_inputs: int = 0  # inputs answered from the response cache


@dataclass
class ClassifyResult:
    model: str
    categories: list[str]
    scores: np.ndarray  # (N, C) fp32 in [0, 1], columns in ``categories`` order
    flags: np.ndarray  # (N, C) bool
    timings: Timings
    extras: dict[str, list[Any]] = field(default_factory=dict)  # per-input extra result fields
    thresholds: np.ndarray | None = None  # (C,) the flag threshold of each column


class Classifier(Protocol):
    """One served model: what every transport may ask of it."""

    @property
    def name(self) -> str: ...

    @property
    def categories(self) -> list[str]:
        """Column order of ``ClassifyResult.scores``: OpenAI wire names, or an imported
        model's own labels (see ``label_map``)."""
        ...

    @property
    def label_map(self) -> dict[str, str]:
        """An imported model's own label -> OpenAI category (``categories`` are then its own
        labels); empty when ``categories`` are OpenAI's already."""
        ...

    @property
    def ready(self) -> bool:
        """Loaded and warmed: requests will be answered, not refused with 503."""
        ...

    @property
    def version(self) -> str:
        """The model_repo version folder served ("1" for models without one)."""
        ...

    async def classify(
        self, texts: list[str], timeout_s: float | None = None
    ) -> ClassifyResult: ...


def readiness_error(registry: Registry) -> ModerationError | None:
    """Why ``registry`` is not ready, None if it is: shutting down (503, retry elsewhere),
    failed to load (503 with the cause, no retry), still loading (503, retry). One rule for
    ``/ready`` and KServe's ``/v2/health/ready``."""
    if registry.draining:
        return NotReady("The server is shutting down.")
    if registry.ready:
        return None
    if registry.load_error:
        return ModelLoadFailed.because(registry.load_error)
    return NotReady("Models are loading and warming up.")


class Registry(Protocol):
    """The served models by name, with their lifetime (``start`` loads, ``stop`` drains)."""

    settings: Settings
    metrics: Metrics
    created: int  # unix time, for OpenAI's model list
    load_error: str | None  # why loading failed, for /ready and the health service
    draining: bool  # shutting down: readiness says 503 while in-flight work finishes

    @property
    def engines(self) -> Mapping[str, Classifier]:
        """Loaded models by name (ensembles included)."""
        ...

    @property
    def ready(self) -> bool:
        """Every configured model is loaded and warm."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def resolve(self, requested: str | None, version: str | None = None) -> Classifier:
        """The model for a request's ``model`` field (None and OpenAI names: the default) and
        ``version`` (None or empty: the one served); raises ``ModelNotFound`` (404) or
        ``NotReady`` (503, still loading)."""
        ...
