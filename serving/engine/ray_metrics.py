"""A classifier replica's Prometheus metrics, re-exported through Ray's metrics agent.

Under Ray Serve the engine runs inside a replica process, so its ``/metrics`` registry
(``serving.engine.metrics``) is not the ingress's. Every ``MIRROR_PERIOD_S`` the replica
copies each sample of its registry into a Ray gauge of the same name and labels
(``ray.util.metrics``); Ray's per-node metrics agent serves them with every other Ray metric
(port ``--metrics-export-port``, 8080 by default; the names gain Ray's ``ray_`` prefix and
its ``SessionName``/``NodeAddress`` tags, plus the replica's). Counters and histogram
buckets arrive as their running totals, so ``rate()`` and ``histogram_quantile()`` work on
them as on the originals. The Helm chart's PodMonitor scrapes that port on every pod.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

MIRROR_PERIOD_S = 5.0
PROCESS_PREFIXES = ("process_", "python_")  # Ray exports its own process metrics

GaugeFactory = Callable[[str, str, tuple[str, ...]], Any]  # (name, help, tag keys) -> gauge


def ray_gauge(name: str, doc: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util.metrics import Gauge

    return Gauge(name, description=doc or name, tag_keys=tag_keys)


class RayMetricsMirror:
    """Copies a prometheus_client registry into Ray gauges (one per sample name + labels)."""

    def __init__(self, registry: CollectorRegistry, make_gauge: GaugeFactory = ray_gauge):
        self.registry = registry
        self.make_gauge = make_gauge
        self.gauges: dict[tuple[str, tuple[str, ...]], Any] = {}

    def mirror_once(self) -> int:
        """One copy of every sample; returns how many were set."""
        n = 0
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.startswith(PROCESS_PREFIXES) or s.name.endswith("_created"):
                    continue
                keys = tuple(sorted(s.labels))
                gauge = self.gauges.get((s.name, keys))
                if gauge is None:
                    gauge = self.make_gauge(s.name, family.documentation, keys)
                    self.gauges[s.name, keys] = gauge
                gauge.set(float(s.value), tags=dict(s.labels))
                n += 1
        return n

    async def run(self, period_s: float = MIRROR_PERIOD_S) -> None:
        while True:
            try:
                self.mirror_once()
            except Exception:  # metrics must never take the replica down
                log.exception("mirroring metrics to Ray failed; retrying")
            await asyncio.sleep(period_s)
