"""Response cache: what it buys on traffic with repeats, and what it costs on traffic without.

Two modserve servers on the same model, one with the response cache off
(``MODSERVE_CACHE_BYTES=0``) and one with the default bound, are driven in turn by the same
closed loop (``--clients`` clients, ``--seconds`` s per run, the lean keep-alive client
``benchmarks.loadgen.HttpClient``) with single texts of 50-600 characters
(``workload.py``'s chat and comment kinds):

* ``--dup-rates`` (default 0 and 0.3): each request repeats an earlier text of its run with
  this probability (spam waves, retries, the same LLM answer), else sends a new one; a
  server never sees another run's texts (fresh seed per run), so 0 means no repeats at all;
* runs alternate off/on ``--rounds`` times per rate, so slow drift of a shared machine
  hits both alike; the ratio on/off of the summed requests is the result.

Targets (issue #17): with 30 % repeats >= 1.4x the requests/s of the cache off; with none,
>= 0.97x (it must cost ~nothing). Writes ``<out>/cache-<stamp>.json`` and ``.png``.

    python -m benchmarks.cache --model-dir model_repo/modserve-moderation-minilm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.loadgen import HttpClient
from benchmarks.overload import CLIENT_TIMEOUT_S, PATH
from benchmarks.probes import machine_info
from benchmarks.report import save_json_and_plot
from benchmarks.workload import single_texts

TARGET_WITH_REPEATS = 1.4  # at 30 % repeats
TARGET_WITHOUT = 0.97
MIN_CHARS, MAX_CHARS = 50, 600
ON_BYTES = str(64 * 2**20)


async def closed_loop(
    base: str, texts: list[str], dup_rate: float, clients: int, seconds: float, seed: int
) -> dict[str, Any]:
    """Requests/s and latency of ``clients`` closed-loop clients; a request repeats an
    earlier text of this run with probability ``dup_rate``."""
    c, rng = HttpClient(base, CLIENT_TIMEOUT_S), random.Random(seed)
    sent: list[str] = []
    fresh = (f"{t} ({k})" if k else t for k in range(10**6) for t in texts)  # never runs dry
    latencies: list[float] = []
    errors = 0
    t_end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal errors
        while time.perf_counter() < t_end:
            if sent and rng.random() < dup_rate:
                text = sent[rng.randrange(len(sent))]
            else:
                text = next(fresh)
                sent.append(text)
            t0 = time.perf_counter()
            status, _ = await c.post(PATH, {"input": text})
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    took = time.perf_counter() - t0
    await c.aclose()
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(took, 2),
        "rps": round(len(latencies) / took, 2),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
    }


def hit_count(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modserve_cache_lookups_total") and 'result="hit"' in line
    )


def run(
    bases: dict[str, str], dup_rates: list[float], clients: int, seconds: float, rounds: int
) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": [], "summary": {}}
    seed = 1000
    for rate in dup_rates:
        total = {"off": 0, "on": 0}
        took = {"off": 0.0, "on": 0.0}
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                seed += 1
                texts = single_texts(int(seconds * 300) + 1000, seed, MIN_CHARS, MAX_CHARS)
                hits0 = hit_count(bases[mode])
                res = asyncio.run(closed_loop(bases[mode], texts, rate, clients, seconds, seed))
                res.update(dup_rate=rate, cache=mode, round=r,
                           cache_hits=int(hit_count(bases[mode]) - hits0))  # fmt: skip
                results["runs"].append(res)
                total[mode] += res["requests"]
                took[mode] += res["seconds"]
                print(json.dumps(res), flush=True)
        off, on = total["off"] / took["off"], total["on"] / took["on"]
        results["summary"][str(rate)] = {
            "rps_off": round(off, 2),
            "rps_on": round(on, 2),
            "ratio_on_over_off": round(on / off, 3),
        }
    s = results["summary"]
    checks = {}
    if "0.3" in s:
        checks["30% repeats >= 1.4x"] = s["0.3"]["ratio_on_over_off"] >= TARGET_WITH_REPEATS
    if "0.0" in s:
        checks["no repeats >= 0.97x"] = s["0.0"]["ratio_on_over_off"] >= TARGET_WITHOUT
    results["checks"] = checks
    return results


def table(res: dict[str, Any]) -> str:
    lines = ["| repeats | cache off req/s | cache on req/s | on/off |", "|---|---|---|---|"]
    for rate, s in res["summary"].items():
        lines.append(
            f"| {float(rate):.0%} | {s['rps_off']} | {s['rps_on']} | {s['ratio_on_over_off']}x |"
        )
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(res["summary"])
    x = np.arange(len(rates))
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (mode, color) in enumerate((("off", "tab:gray"), ("on", "tab:blue"))):
        vals = [res["summary"][r][f"rps_{mode}"] for r in rates]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=f"cache {mode}", color=color)
    ax.set_xticks(x, [f"{float(r):.0%} repeats" for r in rates])
    ax.set_ylabel("requests/s (closed loop)")
    ax.set_title(f"Response cache, {res['machine'].get('cpu', '')}"[:70])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repo/modserve-moderation-minilm"))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="per run")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per repeat rate")
    p.add_argument("--dup-rates", type=float, nargs="+", default=[0.0, 0.3])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.servers import start_server

    a = build_parser().parse_args(argv)
    servers = {
        "off": start_server("modserve", a.model_dir, {"MODSERVE_CACHE_BYTES": "0"}),
        "on": start_server("modserve", a.model_dir, {"MODSERVE_CACHE_BYTES": ON_BYTES}),
    }
    try:
        for s in servers.values():
            s.wait_ready()
        res = run({k: s.base_url for k, s in servers.items()}, a.dup_rates, a.clients,
                  a.seconds, a.rounds)  # fmt: skip
    finally:
        for s in servers.values():
            s.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res.update(
        command="python -m benchmarks.cache " + " ".join(argv or []),
        date=stamp,
        machine=machine_info(),
        settings={
            "clients": a.clients,
            "seconds": a.seconds,
            "rounds": a.rounds,
            "cache_bytes_on": ON_BYTES,
        },
    )
    print(table(res))
    save_json_and_plot(res, a.out, f"cache-{stamp}", lambda p: plot(res, p))
    print(json.dumps(res["checks"]))
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
