"""One server, one sweep: closed loop over concurrencies, then open loop over offered rates.

The open-loop rates are fractions of the best closed-loop request rate, so every server
is swept around its own capacity with a bounded number of points. The knee is the highest
offered rate that still meets the SLO (p99 <= ``slo_p99_ms``, errors <= 1 %; a server that
falls behind shows it as latency from the intended send time); goodput is the most
inputs/s of any point meeting it. The p99 is that of the interactive requests (one chat
message or comment) by default (``slo_on``): a 600-token post or a 30-input batch costs
more than 200 ms of compute on a 2-core CPU by itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from benchmarks.loadgen import RunResult, Target, run_closed, run_open
from benchmarks.probes import ProcessTreeCpu, batch_stats_delta, scrape_batch_stats
from benchmarks.workload import Request

MAX_ERROR_RATE = 0.01  # runs with more errors than this never meet the SLO


@dataclass(frozen=True)
class SweepConfig:
    """Knobs of a sweep. Time per server ~ warmup + (len(concurrency)+len(fractions)) x
    (duration + drain)."""

    duration_s: float = 6.0  # measurement window per point
    warmup_s: float = 2.0  # closed loop at concurrency 4, not reported
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    # fine below 0.6: on a 2-core CPU every knee measured so far lies between 0.3x and 0.6x
    rate_fractions: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2)
    rates_rps: tuple[float, ...] = ()  # absolute open-loop rates; replace the fractions if set
    arrival: str = "poisson"  # "poisson" | "constant"
    slo_p99_ms: float = 200.0
    slo_on: str = "interactive"  # p99 of "interactive" (chat/comment) requests, or of "all"
    seed: int = 0
    progress: bool = True


def meets_slo(summary: dict[str, Any], slo_p99_ms: float, slo_on: str = "interactive") -> bool:
    key = "interactive_latency_ms" if slo_on == "interactive" else "latency_ms"
    p99 = summary[key]["p99"]
    return p99 is not None and p99 <= slo_p99_ms and summary["error_rate"] <= MAX_ERROR_RATE


async def _measure(coro: Any, base_url: str, cpu: ProcessTreeCpu | None) -> dict[str, Any]:
    before = scrape_batch_stats(base_url)
    cpu0, t0 = (cpu.cpu_s() if cpu else 0.0), time.perf_counter()
    client0 = time.process_time()
    res: RunResult = await coro
    wall = time.perf_counter() - t0
    out = res.summary()
    out["client_cpu_cores_used"] = round((time.process_time() - client0) / wall, 2)
    out["server"] = batch_stats_delta(before, scrape_batch_stats(base_url), wall)
    out["server"]["cpu_cores_used"] = round((cpu.cpu_s() - cpu0) / wall, 2) if cpu else None
    return out


async def run_sweep(
    target: Target,
    base_url: str,
    server_pid: int | None,
    requests: list[Request],
    tokens: list[int],
    cfg: SweepConfig,
    label: str = "",
) -> dict[str, Any]:
    """Closed then open loop against one running server; returns points + knee + goodput."""
    cpu = ProcessTreeCpu(server_pid) if server_pid else None
    n_points = len(cfg.concurrency) + len(cfg.rates_rps or cfg.rate_fractions)
    bar = tqdm(total=n_points, desc=label or target.name, disable=not cfg.progress, unit="pt")
    if cfg.warmup_s > 0:
        await run_closed(target, requests, tokens, 4, cfg.warmup_s)
    closed = []
    for c in cfg.concurrency:
        closed.append(
            await _measure(run_closed(target, requests, tokens, c, cfg.duration_s), base_url, cpu)
        )
        bar.update()
        bar.set_postfix(rps=closed[-1]["achieved_rps"], p99=closed[-1]["latency_ms"]["p99"])
    best_rps = max(p["achieved_rps"] for p in closed) or 1.0
    rates = cfg.rates_rps or tuple(round(max(0.5, best_rps * f), 2) for f in cfg.rate_fractions)
    opened = []
    for i, rate in enumerate(rates):
        opened.append(
            await _measure(
                run_open(target, requests, tokens, rate, cfg.duration_s, cfg.arrival, cfg.seed + i),
                base_url,
                cpu,
            )
        )
        bar.update()
        bar.set_postfix(rps=opened[-1]["achieved_rps"], p99=opened[-1]["latency_ms"]["p99"])
    bar.close()
    return {"closed_loop": closed, "open_loop": opened, **headline(closed, opened, cfg)}


def headline(
    closed: list[dict[str, Any]], opened: list[dict[str, Any]], cfg: SweepConfig
) -> dict[str, Any]:
    """Max throughput (any latency), knee (open loop) and goodput under the SLO."""
    everything = closed + opened
    best = max(everything, key=lambda p: p["inputs_per_s"])
    ok = [p for p in opened if meets_slo(p, cfg.slo_p99_ms, cfg.slo_on)]
    knee = max(ok, key=lambda p: p["offered_rps"]) if ok else None
    ok_all = [p for p in everything if meets_slo(p, cfg.slo_p99_ms, cfg.slo_on)]
    good = max(ok_all, key=lambda p: p["inputs_per_s"]) if ok_all else None
    return {
        "max_inputs_per_s": best["inputs_per_s"],
        "max_rps": max(p["achieved_rps"] for p in everything),
        "knee": None
        if knee is None
        else {
            "offered_rps": knee["offered_rps"],
            "achieved_rps": knee["achieved_rps"],
            "inputs_per_s": knee["inputs_per_s"],
            "latency_ms": knee["latency_ms"],
            "interactive_latency_ms": knee["interactive_latency_ms"],
            "padding_ratio": knee["server"]["padding_ratio"],
            "mean_batch_size": knee["server"]["mean_batch_size"],
        },
        # server throughput / core throughput on the same batches, at max throughput
        "serving_efficiency_at_max": best["server"].get("serving_efficiency"),
        "goodput_inputs_per_s": good["inputs_per_s"] if good else 0.0,
        "slo_p99_ms": cfg.slo_p99_ms,
        "slo_on": cfg.slo_on,
    }


def run_sweep_sync(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run_sweep(*args, **kwargs))
