"""Per-model inference statistics in Triton's form (KServe ``/v2/models/{m}/stats``, gRPC
``ModelStatistics``), so tritonclient's ``get_inference_statistics`` and perf_analyzer work.

Cumulative since the model was loaded, per request (Triton's ``inference_stats``):
``success`` / ``fail`` (count, total ns end to end), ``queue`` (the longest wait of a
request's sequences), ``compute_input`` (tokenization), ``compute_infer`` (the forward its
last batch took), ``compute_output`` (post-processing); ``inference_count`` counts inputs
(texts), ``execution_count`` model forwards (batches), ``cache_hit`` inputs answered by the
response cache. Prometheus (``/metrics``) has the same as histograms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.engine.types import Classifier

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class InferenceStats:
    durations: dict[str, list[int]] = field(
        default_factory=lambda: {k: [0, 0] for k in DURATIONS}  # [count, total ns]
    )
    inference_count: int = 0
    execution_count: int = 0
    cache_hit: int = 0
    last_inference_ms: int = 0

    def add(self, kind: str, seconds: float) -> None:
        d = self.durations[kind]
        d[0] += 1
        d[1] += int(seconds * 1e9)

    def request_done(
        self, ok: bool, total_s: float, inputs: int = 0, cached: int = 0, **parts_s: float
    ) -> None:
        """One request answered (``ok``) or failed; ``parts_s``: queue, compute_input, ..."""
        self.add("success" if ok else "fail", total_s)
        if ok:
            self.inference_count += inputs
            self.cache_hit += cached
            for kind, seconds in parts_s.items():
                self.add(kind, seconds)
        self.last_inference_ms = int(time.time() * 1000)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        """One ``model_stats`` entry of Triton's HTTP statistics JSON."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self.durations.items()}
            | {"cache_hit": {"count": self.cache_hit, "ns": 0}},
            "batch_stats": [],
        }


def model_statistics(engines: Sequence[Classifier]) -> list[dict[str, Any]]:
    """Triton's ``model_stats`` for ``engines``: a local model's counters
    (``serving.engine.stats``); a model served by Ray replicas or an ensemble reports its
    name and version with zero counters (their counters are the replicas' /metrics)."""
    return [(getattr(e, "stats", None) or InferenceStats()).as_json(e.name, e.version)
            for e in engines]  # fmt: skip


def repository_index(engines: Sequence[Classifier]) -> list[dict[str, str]]:
    """Triton's repository index: every served model, READY once loaded and warmed."""
    return [
        {"name": e.name, "version": e.version, "state": "READY" if e.ready else "LOADING"}
        for e in engines
    ]
