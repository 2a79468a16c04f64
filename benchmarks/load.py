"""Load tests: modserve and its peers, side by side, on the same model, machine and workload.

Compare servers (each started in turn on a loopback port, swept, stopped)::

    python -m benchmarks.load --servers modserve,modserve-ray,naive,ray-batch,infinity

Sweep one server that is already running (no launch)::

    python -m benchmarks.load --url http://127.0.0.1:8000 --label mine

Kinds: modserve (defaults: backend x dtype timed at start), modserve-torch (torch float32
pinned), modserve-int8 (torch int8, compiled), modserve-grpc (same server, KServe v2
gRPC), modserve-ray, naive, ray-batch, infinity, infinity-onnx (its optimum engine). Results:
``benchmarks/results/load-<stamp>.json`` + two PNGs + a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.loadgen import GrpcTarget, HttpTarget, Target
from benchmarks.probes import batch_stats_delta, machine_info, scrape_batch_stats
from benchmarks.servers import KINDS, MODSERVE_ENV_BY_KIND, start_server
from benchmarks.sweep import SweepConfig, run_sweep
from benchmarks.workload import Request, describe, make_requests, single_texts, token_counts
from serving.config import DEFAULT_MODEL_NAME

DEFAULT_MODEL_DIR = Path("model_repo") / DEFAULT_MODEL_NAME
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALL_KINDS = (
    "modserve",
    "modserve-torch",
    "modserve-int8",
    "modserve-bf16",
    "modserve-ort-int8",
    "modserve-grpc",
    "modserve-ray",
    "naive",
    "ray-batch",
    "infinity",
    "infinity-onnx",
)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--servers",
        default="modserve,modserve-torch,modserve-grpc,modserve-ray,naive,ray-batch,infinity,"
        "infinity-onnx",
        help=f"comma-separated kinds from {ALL_KINDS}",
    )
    p.add_argument("--url", help="sweep this already running modserve-like server instead")
    p.add_argument("--label", default="external", help="name of the --url server in results")
    p.add_argument("--server-pid", type=int, help="--url server's pid, for its CPU use")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="model_repo folder (or a bare HF encoder: random head) all servers load",
    )
    p.add_argument("--n-requests", type=int, default=2000, help="workload size (cycled)")
    p.add_argument(
        "--workload",
        choices=("mix", "single"),
        default="mix",
        help="mix: workload.py's standard mix (chat, comments, long texts, batches); single: "
        "one distinct text of 50-600 characters per request (issue #17's end-to-end target)",
    )
    p.add_argument(
        "--no-core-replay",
        action="store_true",
        help="skip timing the model core alone on each modserve kind's batches",
    )
    p.add_argument("--seed", type=int, default=0, help="fixes the workload and arrivals")
    p.add_argument("--duration-s", type=float, default=6.0, help="window per sweep point")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument(
        "--concurrency",
        type=_ints,
        default=(1, 4, 16, 64),
        help="closed-loop client counts, e.g. 1,4,16,64",
    )
    p.add_argument(
        "--rate-fractions",
        type=_floats,
        default=SweepConfig.rate_fractions,
        help="open-loop rates as fractions of the best closed-loop rate",
    )
    p.add_argument(
        "--rates-rps",
        type=_floats,
        default=(),
        help="absolute open-loop rates (requests/s), instead of the fractions",
    )
    p.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--slo-p99-ms", type=float, default=200.0)
    p.add_argument(
        "--slo-on",
        choices=("interactive", "all"),
        default="interactive",
        help="p99 of chat/comment requests only, or of every request",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_model_dir(path: Path) -> Path:
    """A model_repo folder; a bare HF encoder gets a temp folder with a random head."""
    from benchmarks._models import _repo_from_encoder, is_model_repo_dir

    if is_model_repo_dir(path):
        return path.resolve()
    if (path / "config.json").is_file():
        return _repo_from_encoder(path.resolve(), 256)
    raise SystemExit(
        f"{path}: not a model_repo folder (config.yaml) nor an HF encoder folder; "
        "train one (make train) or pass --model-dir"
    )


async def _sweep_target(
    make_target: Callable[[], Target],
    base_url: str,
    pid: int | None,
    workload: tuple[list[Any], list[int]],
    cfg: SweepConfig,
    label: str,
) -> dict[str, Any]:
    """Sweep one running server; the target is made here, inside the event loop (gRPC aio)."""
    target = make_target()
    before = scrape_batch_stats(base_url)
    try:
        sweep = await run_sweep(target, base_url, pid, *workload, cfg, label=label)
    finally:
        await target.aclose()
    totals = batch_stats_delta(before, scrape_batch_stats(base_url))
    best = max(sweep["closed_loop"] + sweep["open_loop"], key=lambda p: p["inputs_per_s"])
    return {
        "sweep": sweep,
        "padding_ratio": totals["padding_ratio"],
        "mean_batch_size": totals["mean_batch_size"],
        "batch_totals": totals,
        "cpu_cores_used_at_max": best["server"]["cpu_cores_used"],
    }


def run_kind(
    kind: str,
    model_dir: Path,
    workload: tuple[list[Any], list[int]],
    cfg: SweepConfig,
    core_replay: bool = True,
) -> dict[str, Any]:
    """Start ``kind``, sweep it, stop it; for modserve kinds, replay the batches of its best
    point through the model core alone (``core_replay``). Failures are recorded, not raised."""
    launch = "modserve" if kind == "modserve-grpc" else kind
    try:
        server = start_server(launch, model_dir)
    except Exception as e:  # e.g. infinity's virtualenv could not be built
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        ready_s = server.wait_ready()

        def make_target() -> Target:
            if kind == "modserve-grpc":
                return GrpcTarget(server.grpc_url or "", server.model_name)
            if kind.startswith("infinity"):
                return HttpTarget(server.base_url, "/classify", infinity_model=model_dir.name)
            return HttpTarget(server.base_url)

        out = asyncio.run(
            _sweep_target(make_target, server.base_url, server.pid, workload, cfg, kind)
        )
        if launch in MODSERVE_ENV_BY_KIND:
            out["runtime"] = served_runtime(server.base_url, model_dir.name)
        if kind.startswith("infinity"):
            from benchmarks.peers import infinity_peer

            out["export_max_abs_score_diff"] = infinity_peer.LAST_EXPORT_MAX_ABS_DIFF
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:4000], "log_tail": server.log_tail()}
    finally:
        server.stop()
    if launch in MODSERVE_ENV_BY_KIND and core_replay:  # the cores are idle again
        rt = out.get("runtime") or {"backend": "torch", "dtype": "float32"}
        out["core_replay"] = replay_best_point(out["sweep"], model_dir, rt["dtype"], rt["backend"])
    return {"ready_s": round(ready_s, 1), **out}


def served_runtime(base_url: str, model: str) -> dict[str, Any] | None:
    """The backend and dtype a modserve server chose (``/v1/models`` ``runtime``)."""
    import httpx

    for m in httpx.get(base_url + "/v1/models", timeout=10).json()["data"]:
        if m["id"] == model and "runtime" in m:
            return dict(m["runtime"])
    return None


def replay_best_point(
    sweep: dict[str, Any], model_dir: Path, dtype: str, backend: str = "torch"
) -> dict[str, Any]:
    """The model core alone on the batches of the best closed-loop point (issue #5's rule:
    server throughput >= 85 % of the core's at the same batch composition)."""
    from benchmarks.core_replay import isolated_core_seconds

    best = max(sweep["closed_loop"], key=lambda p: p["inputs_per_s"])
    server = best["server"]
    if not server.get("per_bucket") or not server.get("wall_s"):
        return {"error": "the server exposed no per-bucket batch counters"}
    full = sum(int(b) * seqs for b, (_, seqs) in server["per_bucket"].items())
    factor = server["padded_tokens"] / full if server.get("padded_tokens") and full else 1.0
    core = isolated_core_seconds(
        model_dir, dtype, server["per_bucket"], backend=backend, length_factor=min(1.0, factor)
    )
    ratio = core["core_seconds"] / server["wall_s"]
    return {
        "concurrency": best["concurrency"],
        "wall_s": server["wall_s"],
        **core,
        "server_over_core_throughput": round(ratio, 3),
        # What the model alone would sustain on these batches: the ceiling for any server.
        "core_only_inputs_per_s": round(best["inputs_per_s"] / ratio, 1) if ratio else None,
    }


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cfg = SweepConfig(
        a.duration_s,
        a.warmup_s,
        a.concurrency,
        a.rate_fractions,
        a.rates_rps,
        a.arrival,
        a.slo_p99_ms,
        a.slo_on,
        a.seed,
        progress=not a.no_progress,
    )
    model_dir = resolve_model_dir(a.model_dir)
    requests = (
        make_requests(a.n_requests, a.seed)
        if a.workload == "mix"
        else [Request("single", [t]) for t in single_texts(a.n_requests, a.seed)]
    )
    from serving.model.repo_config import load_model_config

    vdir = load_model_config(model_dir).version_dir(model_dir)
    tokens = token_counts(requests, str(vdir / "tokenizer.json"))
    workload = (requests, tokens)
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.load", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "model": model_dir.name,
        "workload": {"kind": a.workload, "seed": a.seed, **describe(requests, tokens)},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "notes": "client and server share the machine's cores; peers truncate inputs longer "
        "than the model window, modserve chunks them (more work for modserve)",
        "servers": {},
    }
    if a.url:
        url = a.url.rstrip("/")
        results["servers"][a.label] = asyncio.run(
            _sweep_target(lambda: HttpTarget(url), url, a.server_pid, workload, cfg, a.label)
        )
    else:
        for kind in [k for k in a.servers.split(",") if k]:
            if kind not in ALL_KINDS:
                raise SystemExit(f"unknown server {kind!r}; choose from {ALL_KINDS} ({KINDS})")
            results["servers"][kind] = run_kind(
                kind, model_dir, workload, cfg, not a.no_core_replay
            )
            if "error" in results["servers"][kind]:
                print(f"{kind}: {results['servers'][kind]['error'][:300]}", file=sys.stderr)
    results["headline"] = headline(results)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = report.write_results(results, a.out, stamp)
    if not a.no_plots:
        report.plot(results, a.out, stamp)
    print(report.markdown_table(results))
    print(f"results: {path}")
    return 0


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """modserve goodput / best peer goodput at p99 <= SLO; padding vs ray @serve.batch.

    ``core_ceiling_*_over_naive``: the model core alone on modserve's batches, over the naive
    server's max throughput: no serving layer can beat that ratio on this machine.

    The same ratios for ``modserve-int8`` (prefix ``modserve_int8``) when it was measured.
    """
    servers = results["servers"]

    def good(name: str) -> float:
        return float(servers.get(name, {}).get("sweep", {}).get("goodput_inputs_per_s", 0.0))

    peer_kinds = ("naive", "ray-batch", "infinity", "infinity-onnx")
    peers = {k: good(k) for k in peer_kinds if good(k) > 0}
    best_infinity = max(
        (k for k in peers if k.startswith("infinity")), key=lambda k: peers[k], default=None
    )
    best_peer = max(peers, key=lambda k: peers[k]) if peers else None

    def ratios(kind: str) -> dict[str, Any]:
        g, key = good(kind), kind.replace("-", "_")
        replay = servers.get(kind, {}).get("core_replay", {})

        def over(peer: str | None) -> float | None:
            return round(g / peers[peer], 2) if peer in peers else None

        return {
            f"{key}_goodput_inputs_per_s": g,
            f"{key}_over_best_peer": over(best_peer),
            f"{key}_over_naive": over("naive"),
            f"max_throughput_{key}_over_naive": _max_ratio(servers, kind, "naive"),
            f"{key}_over_infinity": over("infinity"),
            f"{key}_over_best_infinity": over(best_infinity),
            f"{key}_over_core_same_batches": replay.get("server_over_core_throughput"),
            f"core_ceiling_{key}_over_naive": _over_max(
                replay.get("core_only_inputs_per_s"), servers, "naive"
            ),
        }

    return {
        **(ratios("modserve-int8") if good("modserve-int8") > 0 else {}),
        **(ratios("modserve-torch") if good("modserve-torch") > 0 else {}),
        **ratios("modserve"),
        "best_peer": best_peer,
        "best_infinity_engine": best_infinity,
        "padding_ratio_modserve": servers.get("modserve", {}).get("padding_ratio"),
        "padding_ratio_ray_batch": servers.get("ray-batch", {}).get("padding_ratio"),
    }


def _max_ratio(servers: dict[str, Any], a: str, b: str) -> float | None:
    """Ratio of max inputs/s (any latency) of servers ``a`` and ``b``."""
    return _over_max(servers.get(a, {}).get("sweep", {}).get("max_inputs_per_s"), servers, b)


def _over_max(inputs_per_s: float | None, servers: dict[str, Any], b: str) -> float | None:
    """``inputs_per_s`` over server ``b``'s max inputs/s (None when either is missing)."""
    b_max = servers.get(b, {}).get("sweep", {}).get("max_inputs_per_s")
    return round(inputs_per_s / b_max, 2) if inputs_per_s and b_max else None


if __name__ == "__main__":
    sys.exit(main())
