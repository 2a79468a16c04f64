"""A classifier replica's metrics mirrored into Ray gauges (serving/engine/ray_metrics.py)."""

from __future__ import annotations

from typing import Any

from serving.engine.metrics import Metrics
from serving.engine.ray_metrics import RayMetricsMirror


class FakeGauge:
    def __init__(self, name: str, doc: str, tag_keys: tuple[str, ...]) -> None:
        self.name, self.tag_keys, self.values = name, tag_keys, {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        assert tuple(sorted(tags)) == self.tag_keys  # Ray rejects undeclared tags
        self.values[tuple(sorted(tags.items()))] = value


def test_every_engine_sample_becomes_a_gauge_with_its_labels_and_running_total():
    m = Metrics()
    m.inputs.labels("tiny").inc(3)
    m.request_duration.labels("tiny", "openai", "200").observe(0.02)
    m.cache_lookups.labels("tiny", "hit").inc(2)
    made: dict[str, FakeGauge] = {}

    def factory(name: str, doc: str, keys: tuple[str, ...]) -> Any:
        made[name] = FakeGauge(name, doc, keys)
        return made[name]

    mirror = RayMetricsMirror(m.registry, factory)
    assert mirror.mirror_once() > 0
    assert made["modserve_inputs_total"].values == {(("model", "tiny"),): 3.0}
    buckets = made["modserve_request_duration_seconds_bucket"]
    assert buckets.tag_keys == ("le", "model", "protocol", "status")
    assert buckets.values[(("le", "0.025"), ("model", "tiny"), ("protocol", "openai"),
                           ("status", "200"))] == 1.0  # fmt: skip
    assert made["modserve_cache_lookups_total"].values[(("model", "tiny"), ("result", "hit"))] == 2
    assert not any(n.startswith(("process_", "python_")) or n.endswith("_created") for n in made)
    m.inputs.labels("tiny").inc(2)  # the next pass updates the same gauge
    mirror.mirror_once()
    assert made["modserve_inputs_total"].values == {(("model", "tiny"),): 5.0}
