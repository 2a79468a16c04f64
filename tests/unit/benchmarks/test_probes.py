"""Server-side counters the load benchmark derives its padding and efficiency figures from."""

from __future__ import annotations

from benchmarks.probes import batch_stats_delta


def test_padding_batch_size_and_serving_efficiency_by_hand() -> None:
    before = {
        "real_tokens": 100,
        "padded_tokens": 150,
        "sequences": 10,
        "batches": 2,
        "model_seconds": 1.0,
    }
    after = {
        "real_tokens": 300,
        "padded_tokens": 450,
        "sequences": 30,
        "batches": 6,
        "model_seconds": 2.5,
    }
    d = batch_stats_delta(before, after, wall_s=2.0)
    assert d["padding_ratio"] == 1.5  # 300 padded / 200 real
    assert d["mean_batch_size"] == 5.0  # 20 sequences / 4 batches
    assert d["serving_efficiency"] == 0.75  # the core ran 1.5 s of the 2.0 s
    assert d["core_padded_tokens_per_s"] == 200  # 300 padded tokens in 1.5 core seconds


def test_peer_without_forward_time_has_no_efficiency() -> None:
    before = {"real_tokens": 0, "padded_tokens": 0, "sequences": 0, "batches": 0}
    after = {"real_tokens": 10, "padded_tokens": 20, "sequences": 2, "batches": 1}
    d = batch_stats_delta(before, after, wall_s=1.0)
    assert d["padding_ratio"] == 2.0
    assert d["serving_efficiency"] is None and d["core_padded_tokens_per_s"] is None
    assert batch_stats_delta({}, after)["serving_efficiency"] is None


def test_per_bucket_composition_from_prometheus_text() -> None:
    from benchmarks.probes import _per_bucket

    text = "\n".join(
        [
            'modserve_batch_size_count{bucket="16",model="m"} 4.0',
            'modserve_batch_size_sum{bucket="16",model="m"} 10.0',
            'modserve_batch_size_count{bucket="64",model="m"} 1.0',
            'modserve_batch_size_sum{bucket="64",model="m"} 3.0',
            'modserve_batch_size_bucket{bucket="64",le="4.0",model="m"} 1.0',
        ]
    )
    assert _per_bucket(text) == {16: [4.0, 10.0], 64: [1.0, 3.0]}
    before = {
        "real_tokens": 0,
        "padded_tokens": 0,
        "sequences": 0,
        "batches": 0,
        "per_bucket": {16: [1.0, 2.0]},
    }
    after = {
        "real_tokens": 1,
        "padded_tokens": 1,
        "sequences": 13,
        "batches": 5,
        "per_bucket": _per_bucket(text),
    }
    assert batch_stats_delta(before, after)["per_bucket"] == {16: [3.0, 8.0], 64: [1.0, 3.0]}


def test_headline_ratios_by_hand() -> None:
    from benchmarks.load import headline

    def server(max_inputs: float, goodput: float, **extra: object) -> dict:
        return {"sweep": {"max_inputs_per_s": max_inputs, "goodput_inputs_per_s": goodput}, **extra}

    results = {
        "servers": {
            "modserve-int8": server(
                240.0,
                210.0,
                padding_ratio=1.3,
                core_replay={"server_over_core_throughput": 0.96, "core_only_inputs_per_s": 250.0},
            ),
            "modserve": server(130.0, 80.0, padding_ratio=1.28),
            "naive": server(100.0, 100.0),
            "infinity": server(90.0, 70.0),
            "ray-batch": server(60.0, 50.0, padding_ratio=2.8),
        }
    }
    h = headline(results)
    assert h["best_peer"] == "naive"
    assert h["modserve_int8_over_best_peer"] == 2.1  # 210 / 100 goodput
    assert h["modserve_int8_over_infinity"] == 3.0  # 210 / 70
    assert h["max_throughput_modserve_int8_over_naive"] == 2.4  # 240 / 100
    assert h["core_ceiling_modserve_int8_over_naive"] == 2.5  # 250 / 100
    assert h["modserve_int8_over_core_same_batches"] == 0.96
    assert h["core_ceiling_modserve_over_naive"] is None  # no replay measured
    assert h["padding_ratio_modserve"] == 1.28 and h["padding_ratio_ray_batch"] == 2.8
