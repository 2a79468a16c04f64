"""Results file, plots and the summary table of a load-test run.

``write_results`` saves ``<out>/load-<UTC stamp>.json`` (+ ``latest-load.json``);
``plot`` saves latency vs offered load and throughput vs concurrency PNGs next to it;
``markdown_table`` is the table pasted into the README. ``save_json_and_plot`` is the
``<stem>.json`` + ``<stem>.png`` pair the other benchmarks write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_json_and_plot(
    result: dict[str, Any], out_dir: Path, stem: str, plot_to: Callable[[Path], None]
) -> None:
    """Write ``<out_dir>/<stem>.json`` and the PNG ``plot_to`` draws at ``<stem>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_to(out_dir / f"{stem}.png")
    print(f"wrote {out_dir / stem}.json and .png")


def write_results(results: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"load-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    path.write_text(text)
    (out_dir / "latest-load.json").write_text(text)
    return path


def plot(results: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Two PNGs: p50/p99 latency vs offered rate (open loop), inputs/s vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = {k: v for k, v in results["servers"].items() if v.get("sweep")}
    paths: list[Path] = []
    if any(s["sweep"]["open_loop"] for s in servers.values()):  # none with --rate-fractions ""
        paths.append(_latency_plot(results, servers, out_dir / f"latency-vs-load-{stamp}.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in servers.items():
        pts = s["sweep"]["closed_loop"]
        ax.plot([p["concurrency"] for p in pts], [p["inputs_per_s"] for p in pts], "o-", label=name)
    ax.set(
        xscale="log",
        xlabel="concurrent clients (closed loop)",
        ylabel="inputs/s",
        title=_title(results),
    )
    ticks = list(results["config"]["concurrency"])
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    paths.append(out_dir / f"throughput-vs-concurrency-{stamp}.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _latency_plot(results: dict[str, Any], servers: dict[str, Any], path: Path) -> Path:
    """p50/p99 latency vs offered rate (open loop), log-log, with the SLO line."""
    import matplotlib.pyplot as plt

    slo = results["config"]["slo_p99_ms"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in servers.items():
        pts = s["sweep"]["open_loop"]
        x = [p["offered_rps"] for p in pts]
        line = ax.plot(
            x, [p["latency_ms"]["p99"] or float("nan") for p in pts], "o-", label=f"{name} p99"
        )[0]
        ax.plot(
            x,
            [p["latency_ms"]["p50"] or float("nan") for p in pts],
            "x--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{name} p50",
        )
    ax.axhline(slo, color="grey", ls=":", label=f"SLO p99 {slo:.0f} ms")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="offered load (requests/s, Poisson)",
        ylabel="latency from intended send (ms)",
        title=_title(results),
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(results: dict[str, Any]) -> str:
    m = results["machine"]
    return f"{results['model']} | {m['cpu_cores']} x {m['cpu_model'][:40]} | {m['date_utc'][:10]}"


def markdown_table(results: dict[str, Any]) -> str:
    """Per server: max inputs/s, knee, p50/p99 there, goodput under SLO, padding ratio,
    server throughput over the model core's alone on the same batches (best closed-loop
    point, ``benchmarks.core_replay``)."""
    slo = results["config"]["slo_p99_ms"]
    rows = [
        f"| server | max inputs/s | knee (req/s offered) | p50 / p99 at knee, all (ms) | "
        f"p99 at knee, interactive (ms) | goodput inputs/s (p99 ≤ {slo:.0f} ms) | "
        f"padding ratio | server ÷ core, same batches | server CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in results["servers"].items():
        sw = s.get("sweep")
        if not sw:
            rows.append(f"| {name} | n/a: {s.get('error', 'not run')[:80]} | | | | | | | |")
            continue
        k = sw["knee"]
        knee = f"{k['offered_rps']:g}" if k else "none"
        lat = f"{k['latency_ms']['p50']:g} / {k['latency_ms']['p99']:g}" if k else "-"
        inter = f"{k['interactive_latency_ms']['p99']:g}" if k else "-"
        pad = s.get("padding_ratio")
        cpu = s.get("cpu_cores_used_at_max")
        eff = s.get("core_replay", {}).get("server_over_core_throughput")
        rows.append(
            f"| {name} | {sw['max_inputs_per_s']:g} | {knee} | {lat} | {inter} | "
            f"{sw['goodput_inputs_per_s']:g} | {pad if pad is not None else 'n/a'} | "
            f"{eff if eff is not None else 'n/a'} | {cpu if cpu is not None else 'n/a'} |"
        )
    return "\n".join(rows)
