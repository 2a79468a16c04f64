"""CI smoke run of the load generator: ~3 s of tiny closed- and open-loop load on modserve."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import load
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tiny_repo, MODSERVE_CACHE_BYTES="0")  # the model path, as benchmarked
    srv.wait_ready()
    yield srv
    srv.stop()


def test_load_generator_closed_and_open_loop(
    server: ServerProcess, tiny_repo: Path, tmp_path: Path
):
    rc = load.main(
        [
            "--url",
            server.base,
            "--label",
            "modserve",
            "--server-pid",
            str(server.proc.pid),
            "--model-dir",
            str(tiny_repo / "tiny"),
            "--n-requests",
            "50",
            "--duration-s",
            "0.8",
            "--warmup-s",
            "0.2",
            "--concurrency",
            "1,2",
            "--rates-rps",
            "5,10",
            "--out",
            str(tmp_path),
            "--no-plots",
            "--no-progress",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "latest-load.json").read_text())
    for key in ("command", "machine", "workload", "config", "servers", "headline"):
        assert key in results
    assert results["machine"]["cpu_cores"] >= 1 and results["machine"]["date_utc"]
    s = results["servers"]["modserve"]
    sweep = s["sweep"]
    assert [p["mode"] for p in sweep["closed_loop"] + sweep["open_loop"]] == ["closed"] * 2 + [
        "open"
    ] * 2
    for point in sweep["closed_loop"] + sweep["open_loop"]:
        assert point["requests_ok"] > 0 and point["errors_by_status"] == {}
        assert point["latency_ms"]["p50"] > 0
        assert point["inputs_per_s"] > 0 and point["tokens_per_s"] > 0
    assert s["padding_ratio"] >= 1.0 and s["mean_batch_size"] >= 1.0
    assert s["cpu_cores_used_at_max"] > 0
    # the model core ran for part of every point's wall time, never more than all of it
    # (+10 %: a batch that started just before a point's window is counted whole in it)
    for point in sweep["closed_loop"] + sweep["open_loop"]:
        assert 0.0 < point["server"]["serving_efficiency"] <= 1.1
        assert point["server"]["core_padded_tokens_per_s"] > 0
    assert sweep["serving_efficiency_at_max"] is not None
    assert sweep["max_inputs_per_s"] > 0 and "knee" in sweep


def test_core_replay_times_the_servers_batch_composition(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.core_replay import isolated_core_seconds

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MODSERVE_CPU_WORKERS", raising=False)

    threads = torch.get_num_threads()  # the replay sets the server's CPU layout
    try:  # JSON round trip turns bucket keys into strings: both work
        out = isolated_core_seconds(
            tiny_repo / "tiny", "float32", {"16": [3.0, 6.0], 32: [1.0, 1.0]}, min_time_s=0.05
        )
    finally:
        torch.set_num_threads(threads)
    assert out["workers"] == min(2, len(os.sched_getaffinity(0)))  # MODSERVE_CPU_WORKERS=2
    rows = {r["bucket"]: r for r in out["buckets"]}
    assert (rows[16]["batches"], rows[16]["batch_size"]) == (3, 2)  # mean of 6 over 3 batches
    assert (rows[32]["batches"], rows[32]["batch_size"]) == (1, 1)
    expected = sum(r["batches"] * r["ms_per_batch"] for r in rows.values()) / 1e3
    assert out["core_seconds"] == pytest.approx(expected, abs=2e-3)
    assert out["core_seconds"] > 0


def test_core_workers_compares_layouts_side_by_side(tiny_repo: Path, tmp_path: Path) -> None:
    from benchmarks import core_workers

    assert (
        core_workers.main(
            [
                "--model-dir",
                str(tiny_repo / "tiny"),
                "--dtypes",
                "float32",
                "--forwards",
                "4",
                "--batch",
                "2",
                "--length",
                "16",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("core_workers-*.json")]
    rows = result["rows"]
    cores = result["machine"]["cores_used"]
    layouts = {(r["workers"], r["threads_per_worker"], r["contender"]) for r in rows}
    assert layouts == {(w, max(1, cores // w), c) for w in {1, cores} for c in (False, True)}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all((r["contender_loops_per_s"] or 0) > 0 for r in rows if r["contender"])
    assert list(tmp_path.glob("core_workers-*.png"))


def test_cache_benchmark_sends_repeats_only_when_asked(tiny_repo: Path) -> None:
    """benchmarks.cache's loop on two tiny servers: repeats reach the cache of the server
    that has one; a run without repeats hits nothing (fresh texts per run)."""
    from benchmarks import cache

    off = ServerProcess(tiny_repo, MODSERVE_CACHE_BYTES="0")
    on = ServerProcess(tiny_repo, MODSERVE_CACHE_BYTES=str(2**20))
    try:
        off.wait_ready()
        on.wait_ready()
        res = cache.run({"off": off.base, "on": on.base}, [0.0, 0.5], 4, 1.0, 1)
    finally:
        off.stop()
        on.stop()
    runs = {(r["dup_rate"], r["cache"]): r for r in res["runs"]}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in runs.values())
    assert runs[0.5, "on"]["cache_hits"] > 0
    assert runs[0.0, "on"]["cache_hits"] == 0 and runs[0.5, "off"]["cache_hits"] == 0
    assert set(res["summary"]) == {"0.0", "0.5"} and "no repeats >= 0.97x" in res["checks"]
