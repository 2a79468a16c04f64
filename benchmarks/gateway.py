"""What the policy gateway costs, and whether one project's quota leaves others alone.

Two `modserve serve` processes on the same model (torch float32 pinned), started together:
``off`` (no policy, no audit log: today's default) and ``on`` (a policy file, a key from
the key store, the JSONL audit log, quotas high enough never to refuse). Closed-loop
clients alternate between them in rounds (off, on, off, on, ...), so both see the same
machine state; the report is the median over rounds of each one's throughput and p99, and
the ratio.

Then isolation on the ``on`` server: a key of project ``limited`` (``key_quotas:
requests_per_minute``) sends as fast as it can beside a key of project ``bench``; the
limited key must be held to its rate with 429 + ``Retry-After`` (checked against the
bucket's refill time) while the other keeps its throughput (compared with a run alone).

    python -m benchmarks.gateway [--rounds 3] [--round-s 12] [--clients 16]

Prints a table, writes ``benchmarks/results/gateway-<stamp>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.probes import machine_info
from benchmarks.report import save_json_and_plot
from benchmarks.servers import Server, start_server
from benchmarks.workload import make_requests
from serving.gateway.keys import SqliteKeyStore

ROOT = Path(__file__).resolve().parents[1]
POLICY = """\
policy_id: gateway-benchmark
projects:
  - id: bench
    models: ["*"]
    quotas: {{requests_per_minute: 10000000, tokens_per_minute: 1000000000}}
    key_quotas: {{requests_per_minute: 10000000}}
  - id: limited
    models: ["*"]
    key_quotas: {{requests_per_minute: {limited_rpm}}}
"""


async def closed_loop(
    base: str, key: str | None, bodies: list[dict], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` loops sending the next body as soon as the last answer came."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    retry_after: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t_end = time.perf_counter() + seconds
    i = 0
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

        async def loop() -> None:
            nonlocal i
            while time.perf_counter() < t_end:
                body = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                r = await client.post(base + "/v1/moderations", json=body)
                code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
                statuses[f"{r.status_code} {code}" if code else str(r.status_code)] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                elif r.status_code == 429 and "retry-after" in r.headers:
                    retry_after.append(int(r.headers["retry-after"]))
                    await asyncio.sleep(0.05)  # a client that backs off a little

        t_start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        window = time.perf_counter() - t_start
    ms = np.asarray(latencies) * 1000
    return {
        "ok_rps": round(len(latencies) / window, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "statuses": dict(statuses),
        "retry_after_s": sorted(set(retry_after)),
        "window_s": round(window, 2),
    }


def _median(runs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(r[field] for r in runs if r[field] is not None))


async def measure(args: argparse.Namespace, off: Server, on: Server, keys: dict[str, str]) -> dict:
    bodies = [r.body for r in make_requests(400, seed=3)]
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    await closed_loop(off.base_url, None, bodies, args.clients, 3)  # warm both
    await closed_loop(on.base_url, keys["bench"], bodies, args.clients, 3)
    for r in range(args.rounds):
        for name, server, key in (("off", off, None), ("on", on, keys["bench"])):
            res = await closed_loop(server.base_url, key, bodies, args.clients, args.round_s)
            rounds[name].append(res)
            print(f"round {r + 1} {name:>3}: {res['ok_rps']:7.1f} req/s  p99 {res['p99_ms']} ms")
    alone = await closed_loop(on.base_url, keys["bench"], bodies, args.clients, args.round_s)
    both = await asyncio.gather(
        closed_loop(on.base_url, keys["bench"], bodies, args.clients, args.round_s),
        closed_loop(on.base_url, keys["limited"], bodies, args.limited_clients, args.round_s),
    )
    limited = both[1]
    refill_s = 60 / args.limited_rpm
    allowed_rps = (args.limited_rpm + args.round_s / refill_s) / args.round_s  # burst + refill
    return {
        "overhead": {
            "rounds": rounds,
            "off_rps": _median(rounds["off"], "ok_rps"),
            "on_rps": _median(rounds["on"], "ok_rps"),
            "off_p99_ms": _median(rounds["off"], "p99_ms"),
            "on_p99_ms": _median(rounds["on"], "p99_ms"),
        },
        "isolation": {
            "bench_alone": alone,
            "bench_beside_limited": both[0],
            "limited": limited,
            "limited_rpm": args.limited_rpm,
            "limited_allowed_rps_at_most": round(allowed_rps, 2),
            "retry_after_expected_s": math.ceil(refill_s),
            "retry_after_within_one_refill": all(
                1 <= s <= math.ceil(refill_s) for s in limited["retry_after_s"]
            ),
        },
    }


def _429s(run: dict[str, Any]) -> str:
    """429s refused by a quota / by the server's overload admission (predicted wait)."""
    st = run["statuses"]
    quota = st.get("429 rate_limit_exceeded", 0)
    return f"{quota} / {sum(v for k, v in st.items() if k.startswith('429')) - quota}"


def table(res: dict[str, Any]) -> str:
    o, iso = res["overhead"], res["isolation"]
    ratio = o["on_rps"] / o["off_rps"]
    lim = iso["limited"]
    lines = [
        "| | throughput (req/s) | p99 (ms) |",
        "|---|---:|---:|",
        f"| gateway off (no policy, no audit) | {o['off_rps']:.1f} | {o['off_p99_ms']:.0f} |",
        f"| gateway on (policy + key + quotas + audit) | {o['on_rps']:.1f} | {o['on_p99_ms']:.0f} |",  # noqa: E501
        f"| on / off | {ratio:.3f} ({(ratio - 1) * 100:+.1f} %) | |",
        "",
        "| isolation (gateway on) | ok req/s | p99 (ms) | 429 quota / overload | Retry-After (s) |",
        "|---|---:|---:|---:|---|",
        f"| `bench` key alone | {iso['bench_alone']['ok_rps']:.1f} | {iso['bench_alone']['p99_ms']} | {_429s(iso['bench_alone'])} | |",  # noqa: E501
        f"| `bench` key beside the limited one | {iso['bench_beside_limited']['ok_rps']:.1f} | {iso['bench_beside_limited']['p99_ms']} | {_429s(iso['bench_beside_limited'])} | |",  # noqa: E501
        f"| `limited` key ({iso['limited_rpm']}/min; at most {iso['limited_allowed_rps_at_most']}/s here) | {lim['ok_rps']:.1f} | {lim['p99_ms']} | {_429s(lim)} | {lim['retry_after_s']} (at most {iso['retry_after_expected_s']}: one refill) |",  # noqa: E501
    ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o, iso = res["overhead"], res["isolation"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("off", "on"):
        a.plot([r["ok_rps"] for r in o["rounds"][name]], marker="o", label=f"gateway {name}")
    a.set(xlabel="round", ylabel="req/s", title="Throughput per round (closed loop)")
    a.legend()
    bars = {
        "bench alone": iso["bench_alone"]["ok_rps"],
        "bench beside\nlimited": iso["bench_beside_limited"]["ok_rps"],
        "limited": iso["limited"]["ok_rps"],
    }
    b.bar(list(bars), list(bars.values()), color=["C0", "C0", "C3"])
    b.set(ylabel="ok req/s", title="Quota isolation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = ROOT / "model_repo" / "modserve-moderation-minilm"
    p.add_argument("--model-dir", type=Path, default=default_model)
    p.add_argument("--rounds", type=int, default=3, help="off/on rounds (alternating)")
    p.add_argument("--round-s", type=float, default=12.0, help="seconds per round")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    p.add_argument("--limited-clients", type=int, default=8)
    p.add_argument("--limited-rpm", type=int, default=60, help="the limited key's quota")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "policy.yaml").write_text(POLICY.format(limited_rpm=args.limited_rpm))
        store = SqliteKeyStore(tmp / "keys.db")
        keys = {p: store.create(p, ["moderate"], None)[1] for p in ("bench", "limited")}
        gateway_env = {
            "MODSERVE_POLICY_FILE": str(tmp / "policy.yaml"),
            "MODSERVE_KEY_STORE": str(tmp / "keys.db"),
            "MODSERVE_AUDIT_LOG": f"jsonl:{tmp / 'audit.jsonl'}",
        }
        # both pinned to torch float32: a start-up probe could pick different backends
        off = start_server("modserve-torch", args.model_dir)
        on = start_server("modserve-torch", args.model_dir, gateway_env)
        try:
            off.wait_ready()
            on.wait_ready()
            res = asyncio.run(measure(args, off, on, keys))
        finally:
            off.stop()
            on.stop()
        audit_lines = sum(1 for _ in (tmp / "audit.jsonl").open())
    res.update(
        command="python -m benchmarks.gateway " + " ".join(argv or []),
        machine=machine_info(),
        settings=vars(args) | {"model_dir": str(args.model_dir), "out": str(args.out)},
        audit_records_written=audit_lines,
    )
    print(table(res))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    save_json_and_plot(res, args.out, f"gateway-{stamp}", lambda path: plot(res, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
