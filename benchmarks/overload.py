"""Overload and starvation: what clients see when offered more than the server can do.

Against one modserve server (started here from ``--model-dir``, or ``--url``):

1. capacity: closed loop (``--clients`` clients, ``--capacity-s`` s) of the standard
   workload mix (``benchmarks/workload.py``): achieved requests/s;
2. burst: open loop (Poisson) at ``--multiple`` x that capacity for ``--duration-s`` s;
   every request's send time, status, latency and Retry-After are kept;
3. recovery: from the last arrival of the burst, one small request every 100 ms until one
   answers within ``--normal-ms``: the time to recover;
4. starvation (``--starvation``): one maximal request that fits the deadline (256 inputs of
   ~200 words) while another client sends a short text every 200 ms; and the request of
   issue #15 (256 inputs of 2,000 words), which must be refused at once (413);
0. soak (``--soak-s N``, before the burst): the mix at 0.6x capacity for N s, the server's
   RSS and open file descriptors sampled every 5 s (by hand: ``--soak-s 1800``).

Targets (issue #15; printed as pass/fail and kept in the JSON): admitted requests p99 < 2 s,
429s answered within 50 ms (p99), no 504 for an admitted request, recovery < 3 s.
Writes ``<out>/overload-<stamp>.json`` and ``.png`` (latency over time by status, status
counts per second).

    python -m benchmarks.overload --model-dir model_repo/modserve-moderation-minilm
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import HttpClient
from benchmarks.probes import machine_info
from benchmarks.report import save_json_and_plot
from benchmarks.workload import Request, make_requests

TARGET_ADMITTED_P99_S = 2.0
TARGET_REJECT_P99_S = 0.05
TARGET_RECOVERY_S = 3.0
CLIENT_TIMEOUT_S = 60.0
PATH = "/v1/moderations"
SOAK_SAMPLE_S = 5.0
SOAK_LOAD = 0.6  # soak at this share of the measured capacity


@dataclass
class Sample:
    sent_s: float  # intended send time, from the start of the phase
    status: int  # 0 = no answer (connection error or client timeout)
    latency_s: float  # from the intended send time (no coordinated omission)
    retry_after: str | None = None


async def capacity(base: str, requests: list[Request], clients: int, seconds: float) -> float:
    """Closed-loop requests/s answered 200."""
    c, ok, i = HttpClient(base, CLIENT_TIMEOUT_S), 0, 0
    t_end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal ok, i
        while time.perf_counter() < t_end:
            req = requests[i % len(requests)]
            i += 1
            status, _ = await c.post(PATH, req.body)
            ok += status == 200  # after the await: += across an await loses updates

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    await c.aclose()
    return ok / (time.perf_counter() - t0)


async def burst(
    base: str,
    requests: list[Request],
    rate_rps: float,
    seconds: float,
    normal_s: float,
    seed: int = 0,
) -> tuple[list[Sample], float | None]:
    """Open loop at ``rate_rps`` (Poisson) for ``seconds``: every request's outcome, and
    the recovery time from the last arrival (``recovery``, while the burst drains)."""
    c, rng = HttpClient(base, CLIENT_TIMEOUT_S), random.Random(seed)
    offsets, t = [], 0.0
    while t < seconds:
        offsets.append(t)
        t += rng.expovariate(rate_rps)
    samples: list[Sample] = []
    t0 = time.perf_counter()

    async def one(i: int, off: float) -> None:
        status, headers = await c.post(PATH, requests[i % len(requests)].body)
        samples.append(
            Sample(off, status, time.perf_counter() - t0 - off, headers.get("retry-after"))
        )

    tasks = []
    for i, off in enumerate(offsets):
        delay = t0 + off - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, off)))
    recovered_s = await recovery(base, normal_s)
    await asyncio.gather(*tasks)
    await c.aclose()
    return sorted(samples, key=lambda s: s.sent_s), recovered_s


async def recovery(base: str, normal_s: float, limit_s: float = 60.0) -> float | None:
    """Seconds until a small request answers 200 within ``normal_s`` (None: never)."""
    c = HttpClient(base, CLIENT_TIMEOUT_S)
    t0 = time.perf_counter()
    try:
        while (now := time.perf_counter()) - t0 < limit_s:
            status, _ = await c.post(PATH, {"input": "is the server back?"})
            if status == 200 and time.perf_counter() - now <= normal_s:
                return now - t0
            await asyncio.sleep(0.1)
        return None
    finally:
        await c.aclose()


async def starvation(base: str, seconds_between: float = 0.2) -> dict[str, Any]:
    """One maximal admitted request vs a small one every ``seconds_between`` s; and the
    request that can never finish in time (must be 413, fast)."""
    words = ["the", "weather", "report", "said", "clouds", "and", "light", "rain", "again"]
    rng = random.Random(1)
    big = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(256)]
    small: list[tuple[int, float]] = []
    c = HttpClient(base, CLIENT_TIMEOUT_S)
    t0 = time.perf_counter()
    r_never = await c.post(PATH, {"input": ["word " * 2000] * 256})
    never_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    big_task = asyncio.create_task(HttpClient(base, CLIENT_TIMEOUT_S).post(PATH, {"input": big}))
    while not big_task.done():
        s0 = time.perf_counter()
        status, _ = await c.post(PATH, {"input": "hello, is this fine?"})
        small.append((status, time.perf_counter() - s0))
        await asyncio.sleep(max(0.0, seconds_between - (time.perf_counter() - s0)))
    big_status, _ = big_task.result()
    big_s = time.perf_counter() - t0
    await c.aclose()
    lat = np.array([s for st, s in small if st == 200]) if small else np.array([])
    return {
        "unfinishable_request": {"status": r_never[0], "seconds": round(never_s, 3)},
        "maximal_request": {"inputs": 256, "status": big_status, "seconds": round(big_s, 2)},
        "small_requests": {
            "sent": len(small),
            "statuses": dict(Counter(str(st) for st, _ in small)),
            "p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "max_s": round(float(lat.max()), 3) if len(lat) else None,
        },
    }


def process_usage(pid: int) -> tuple[float, int]:
    """(resident MiB, open file descriptors) of process ``pid`` (Linux /proc)."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def soak(
    base: str, pid: int, requests: list[Request], rate_rps: float, seconds: float
) -> dict[str, Any]:
    """Mixed load at ``rate_rps`` (open loop) for ``seconds``, with the server's RSS and
    file descriptors sampled every ``SOAK_SAMPLE_S``: both must stay flat."""
    usage: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()
    c, rng, i = HttpClient(base, CLIENT_TIMEOUT_S), random.Random(2), 0
    statuses: Counter[int] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one(req: Request) -> None:
        statuses[(await c.post(PATH, req.body))[0]] += 1

    next_sample = t0
    while (now := time.perf_counter()) - t0 < seconds:
        if now >= next_sample:
            usage.append((round(now - t0, 1), *process_usage(pid)))
            next_sample += SOAK_SAMPLE_S
        task = asyncio.create_task(one(requests[i % len(requests)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        await asyncio.sleep(rng.expovariate(rate_rps))
    await asyncio.gather(*tasks)
    await c.aclose()
    usage.append((round(time.perf_counter() - t0, 1), *process_usage(pid)))
    warm = [u for u in usage if u[0] >= seconds * 0.2] or usage  # after the first fifth
    return {
        "seconds": seconds,
        "offered_rps": round(rate_rps, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rss_mib": {
            "first": round(warm[0][1], 1),
            "last": round(warm[-1][1], 1),
            "max": round(max(u[1] for u in warm), 1),
        },
        "fds": {"first": warm[0][2], "last": warm[-1][2], "max": max(u[2] for u in warm)},
        "samples": usage,
    }


def summarize(samples: list[Sample], recovery_s: float | None) -> dict[str, Any]:
    """Status counts, admitted latency, rejection latency and the targets' verdicts."""
    by = Counter(s.status for s in samples)
    ok = np.array([s.latency_s for s in samples if s.status == 200])
    rej = np.array([s.latency_s for s in samples if s.status == 429])

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 4) if len(a) else None

    admitted_p99, reject_p99 = pct(ok, 99), pct(rej, 99)
    retry_ok = all(s.retry_after and s.retry_after.isdigit() for s in samples if s.status == 429)
    checks = {
        "admitted_p99_below_2s": admitted_p99 is not None and admitted_p99 < TARGET_ADMITTED_P99_S,
        "rejections_p99_below_50ms": reject_p99 is None or reject_p99 < TARGET_REJECT_P99_S,
        "every_429_has_retry_after": retry_ok,
        "no_504": by.get(504, 0) == 0,
        "no_5xx_or_lost": all(k and k < 500 for k in by),
        "recovery_below_3s": recovery_s is not None and recovery_s < TARGET_RECOVERY_S,
    }
    return {
        "requests": len(samples),
        "statuses": {str(k): v for k, v in sorted(by.items())},
        "admitted_latency_s": {"p50": pct(ok, 50), "p99": admitted_p99, "max": pct(ok, 100)},
        "rejection_latency_s": {"p50": pct(rej, 50), "p99": reject_p99},
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        "checks": checks,
    }


async def run(
    base: str,
    multiple: float,
    duration_s: float,
    capacity_s: float,
    clients: int,
    normal_s: float,
    with_starvation: bool,
    soak_s: float = 0.0,
    pid: int | None = None,
) -> dict[str, Any]:
    gc.freeze()  # no full GC pass over the client's imports mid-measurement (stalls)
    requests = make_requests(2000, seed=0)
    cap = await capacity(base, requests, clients, capacity_s)
    soaked = await soak(base, pid, requests, cap * SOAK_LOAD, soak_s) if soak_s and pid else None
    samples, rec = await burst(base, requests, cap * multiple, duration_s, normal_s)
    out: dict[str, Any] = {
        "capacity_rps": round(cap, 1),
        "offered_rps": round(cap * multiple, 1),
        "multiple": multiple,
        "duration_s": duration_s,
        "summary": summarize(samples, rec),
        "samples": [asdict(s) for s in samples],
    }
    if with_starvation:
        out["starvation"] = await starvation(base)
    if soaked is not None:
        out["soak"] = soaked
    return out


def table(res: dict[str, Any]) -> str:
    s = res["summary"]
    ok, rej = s["admitted_latency_s"], s["rejection_latency_s"]
    rows = [
        ("capacity (closed loop)", f"{res['capacity_rps']} req/s"),
        ("offered (open loop)", f"{res['offered_rps']} req/s for {res['duration_s']} s"),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())),
        ("admitted p50 / p99", f"{ok['p50']} / {ok['p99']} s"),
        ("429 p50 / p99", f"{rej['p50']} / {rej['p99']} s"),
        ("recovery", f"{s['recovery_s']} s"),
    ]
    rows += [(k, "pass" if v else "FAIL") for k, v in s["checks"].items()]
    if "starvation" in res:
        st = res["starvation"]
        rows += [
            ("256 x 2,000 words", f"{st['unfinishable_request']['status']} in "
                                  f"{st['unfinishable_request']['seconds']} s"),
            ("maximal admitted request", f"{st['maximal_request']['status']} in "
                                         f"{st['maximal_request']['seconds']} s"),
            ("small requests beside it p50 / p99",
             f"{st['small_requests']['p50_s']} / {st['small_requests']['p99_s']} s "
             f"({st['small_requests']['statuses']})"),
        ]  # fmt: skip
    if "soak" in res:
        so = res["soak"]
        rows += [
            ("soak", f"{so['seconds']:.0f} s at {so['offered_rps']} req/s: {so['statuses']}"),
            ("soak RSS first / last / max", f"{so['rss_mib']['first']} / {so['rss_mib']['last']}"
                                            f" / {so['rss_mib']['max']} MiB"),
            ("soak fds first / last / max", f"{so['fds']['first']} / {so['fds']['last']} / "
                                            f"{so['fds']['max']}"),
        ]  # fmt: skip
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = res["samples"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colours = {200: "tab:green", 429: "tab:orange", 504: "tab:red", 413: "tab:purple"}
    for status in sorted({s["status"] for s in samples}):
        pts = [(s["sent_s"], s["latency_s"]) for s in samples if s["status"] == status]
        ax1.scatter(*zip(*pts, strict=True), s=4, label=str(status or "no answer"),
                    color=colours.get(status, "black"))  # fmt: skip
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (s)")
    ax1.axhline(TARGET_ADMITTED_P99_S, ls="--", color="grey", lw=0.8)
    ax1.legend(markerscale=3)
    secs = int(max(s["sent_s"] for s in samples)) + 1
    for status in sorted({s["status"] for s in samples}):
        counts = np.bincount(
            [int(s["sent_s"]) for s in samples if s["status"] == status], minlength=secs
        )
        ax2.plot(range(secs), counts, label=str(status or "no answer"),
                 color=colours.get(status, "black"))  # fmt: skip
    ax2.set_xlabel("send time (s)")
    ax2.set_ylabel("requests / s")
    ax2.legend()
    fig.suptitle(
        f"open loop at {res['multiple']}x capacity ({res['offered_rps']} req/s offered, "
        f"capacity {res['capacity_rps']} req/s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server; else one is started from --model-dir")
    p.add_argument("--model-dir", type=Path, default=Path("model_repo/modserve-moderation-minilm"))
    p.add_argument("--multiple", type=float, default=3.0, help="offered / measured capacity")
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--capacity-s", type=float, default=8.0)
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients (capacity)")
    p.add_argument("--normal-ms", type=float, default=500.0, help="recovered: answer within")
    p.add_argument("--starvation", action="store_true", help="also the starvation phase")
    p.add_argument(
        "--soak-s",
        type=float,
        default=0.0,
        help="first a soak of this many seconds at 0.6x capacity (RSS, fds)",
    )
    p.add_argument("--pid", type=int, help="the --url server's pid (for --soak-s)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    server = None
    base, pid = a.url, a.pid
    if base is None:
        from benchmarks.servers import start_server

        server = start_server("modserve", a.model_dir)
        server.wait_ready()
        base, pid = server.base_url, server.pid
    try:
        res = asyncio.run(
            run(
                base,
                a.multiple,
                a.duration_s,
                a.capacity_s,
                a.clients,
                a.normal_ms / 1000,
                a.starvation,
                a.soak_s,
                pid,
            )
        )
    finally:
        if server is not None:
            server.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res["command"] = "python -m benchmarks.overload " + " ".join(argv or [])
    res["date"] = stamp
    res["machine"] = machine_info()
    print(table(res))
    save_json_and_plot(res, a.out, f"overload-{stamp}", lambda p: plot(res, p))
    print(json.dumps(res["summary"]["checks"]))
    return 0 if all(res["summary"]["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
