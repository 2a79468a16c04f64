"""CPU core layout: one multi-threaded core thread vs several single-batch workers, GIL on/off.

    python -m benchmarks.core_workers --model-dir model_repo/modserve-moderation-minilm
    python -m benchmarks.core_workers --quick        # packaged encoder, fewer forwards

What the engine does with ``MODSERVE_CPU_WORKERS`` / ``MODSERVE_CPU_THREADS``, without HTTP:
``workers`` Python threads each run forwards of one (batch, length) with ``cores //
workers`` torch threads, optionally beside a *GIL contender*: a Python thread that spins
1 ms and sleeps 2 ms, standing in for the server's event loop (HTTP, JSON). For int8 the
compiled kernels run with and without
:func:`serving.model.quantize.release_gil_in_inductor_kernels`.
Every configuration is a fresh subprocess (thread counts and the kernel binding are fixed
at compile time), so the rows are comparable within one run. Reported: tokens/s of the
forwards, and the contender's loops/s (what the event loop would still get done).
Knobs: ``--forwards`` (per configuration; more = less noise), ``--batch``/``--length``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

RESULTS_DIR = Path(__file__).parent / "results"


def measure(
    model_dir: Path,
    dtype: str,
    workers: int,
    release_gil: bool,
    contender: bool,
    batch: int,
    length: int,
    forwards: int,
) -> dict:
    """In this process: tokens/s of ``forwards`` forwards split over ``workers`` threads."""
    import torch

    from benchmarks._models import load_for_bench
    from benchmarks.core_replay import wall_seconds_on_threads
    from serving.config import Settings
    from serving.model import quantize
    from serving.model.cpu_layout import apply_cpu_layout

    if not release_gil:
        quantize.release_gil_in_inductor_kernels = lambda: False
    apply_cpu_layout(Settings(cpu_workers=workers, cpu_threads=0))  # as the server does
    loaded = load_for_bench(model_dir, "cpu", dtype)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(
        1000, int(loaded.moderation_model.encoder.config.vocab_size), (batch, length), generator=gen
    )
    mask = torch.ones(batch, length, dtype=torch.long)

    def forward() -> None:
        with torch.inference_mode():
            loaded.model(ids, mask)

    for _ in range(2):  # int8: compiles here (batch 1 and dynamic shapes are not needed)
        forward()
    stop, loops = threading.Event(), [0]

    def contend() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:
                pass
            loops[0] += 1
            time.sleep(0.002)

    side = threading.Thread(target=contend) if contender else None
    t0 = time.perf_counter()
    if side:
        side.start()
    wall_seconds_on_threads(forward, workers, forwards // workers)
    wall = time.perf_counter() - t0
    stop.set()
    if side:
        side.join()
    done = forwards // workers * workers
    return {
        "dtype": dtype,
        "workers": workers,
        "threads_per_worker": torch.get_num_threads(),
        "release_gil": release_gil,
        "contender": contender,
        "tokens_per_s": round(done * batch * length / wall, 1),
        "contender_loops_per_s": round(loops[0] / wall, 1) if contender else None,
    }


def configurations(dtypes: list[str], max_workers: int) -> list[dict]:
    out = []
    for dtype in dtypes:
        for contender in (False, True):
            for workers in sorted({1, max_workers}):
                gils = (False, True) if dtype == "int8" else (False,)
                out += [
                    {"dtype": dtype, "workers": workers, "release_gil": g, "contender": contender}
                    for g in gils
                ]
    return out


def run_child(args: argparse.Namespace, cfg: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.core_workers",
        "--child",
        json.dumps(cfg),
        "--model-dir",
        str(args.model_dir),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--forwards",
        str(args.forwards),
    ]
    env = {**os.environ, "MODSERVE_INT8_COMPILE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| dtype | workers x threads | GIL released in kernels | event-loop contender | "
        "tokens/s | contender loops/s |",
        "|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        gil = ("yes" if r["release_gil"] else "no") if r["dtype"] == "int8" else "n/a (eager)"
        lines.append(
            f"| {r['dtype']} | {r['workers']} x {r['threads_per_worker']} | {gil} | "
            f"{'yes' if r['contender'] else 'no'} | {r['tokens_per_s']:,.0f} | "
            f"{r['contender_loops_per_s'] if r['contender'] else ''} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['dtype']} {r['workers']}x{r['threads_per_worker']}"
        f"{' gil-free' if r['release_gil'] else ''}{' +loop' if r['contender'] else ''}"
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    ax.barh(labels, [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (forward only)")
    ax.set_title("CPU core layout and GIL (one run, same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model_repo folder (default: the packaged encoder, random head)",
    )
    ap.add_argument("--dtypes", default="int8,float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--forwards", type=int, default=60, help="per configuration")
    ap.add_argument("--quick", action="store_true", help="int8 only, 8 forwards")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model_dir is None:
        from serving.model.load import packaged_encoder_dir

        args.model_dir = packaged_encoder_dir()
    if args.child:
        cfg = json.loads(args.child)
        print(
            json.dumps(
                measure(
                    args.model_dir,
                    cfg["dtype"],
                    cfg["workers"],
                    cfg["release_gil"],
                    cfg["contender"],
                    args.batch,
                    args.length,
                    args.forwards,
                )
            )
        )
        return 0
    from benchmarks.probes import machine_info
    from benchmarks.report import save_json_and_plot

    if args.quick:
        args.dtypes, args.forwards = "int8", 8
    cores = len(os.sched_getaffinity(0))
    rows = [
        run_child(args, cfg)
        for cfg in tqdm(configurations(args.dtypes.split(","), cores), desc="layouts")
    ]
    print(table(rows))
    result = {
        "command": shlex.join(["python", "-m", "benchmarks.core_workers", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "cores_used": cores,
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "batch": args.batch,
        "length": args.length,
        "forwards": args.forwards,
        "model_dir": str(args.model_dir),
        "rows": rows,
    }
    stem = f"core_workers-{result['date'][:10]}" + ("-quick" if args.quick else "")
    save_json_and_plot(result, args.out_dir, stem, lambda path: plot(rows, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
