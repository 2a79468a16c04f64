"""Model-core throughput: our core (encoder + fused head) per precision vs a plain HF forward.

    python -m benchmarks.model_core --quick                      # CPU smoke run, ~1 min
    python -m benchmarks.model_core                              # CPU: torch and ORT, fp32+int8
                                                                 # (+ torch bf16: AVX512-BF16)
    python -m benchmarks.model_core --device cuda                # GPU: float16, bfloat16 (+ fp32)
    python -m benchmarks.model_core --model-dir model_repo/modserve-moderation-minilm

What is timed, for every (sequence length, batch size): the forward the engine runs
(``LoadedModel.model(ids, mask)`` under ``torch.inference_mode``, scores copied to the
host; ``ort-*``: the ONNX Runtime backend, ``serving.model.onnx_runtime``) against
``AutoModelForSequenceClassification`` of the same encoder in fp32 under
``torch.no_grad`` with a sigmoid (what a plain transformers user writes). Inputs are
full-length random token ids (no padding), so tokens/s counts real tokens.

MFU = analytic encoder FLOPs / time / a matmul peak measured here on the same device in
the same precision (fp32 matmul on CPU for float32 and the HF baseline, int8 dynamic
``nn.Linear`` for int8; fp16/bf16/fp32 matmul on CUDA).

Knobs: ``--min-time-s`` (seconds timed per point; more = less noise), ``--repeats``
(best of N rounds with the variants interleaved: use 3+ on a shared machine), ``--max-batch``
and ``--max-batch-tokens`` (largest batch = min(max_batch, max_batch_tokens // length);
the server's default budget is 16384 padded tokens), ``--threads`` (torch intra-op
threads on CPU; 0 = torch default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from benchmarks._models import load_for_bench, version_dir
from benchmarks.probes import cpu_model
from benchmarks.report import save_json_and_plot
from serving.model.cpu_isa import cpu_isa, has_native_bf16
from serving.model.load import packaged_encoder_dir
from serving.model.onnx_runtime import available as ort_available

RESULTS_DIR = Path(__file__).parent / "results"
# CPU: bfloat16 too where the CPU multiplies it in hardware (elsewhere it is emulated)
DEFAULT_PRECISIONS = {"cpu": "float32,int8", "cuda": "float16,bfloat16"}
DEFAULT_HF_PRECISIONS = {"cpu": "float32", "cuda": "float32,float16"}
HEADLINE = (32, 64)  # (batch size, tokens): the point the ratio is reported at


@dataclass
class Point:
    variant: str  # "hf-float32" | "ours-float32" | "ours-int8" | ...
    precision: str
    length_tokens: int
    batch_size: int
    iters: int
    ms_per_batch: float
    sequences_per_s: float
    tokens_per_s: float
    tflops: float
    mfu: float  # fraction of the measured matmul peak of this precision


# -- device facts -----------------------------------------------------------------------------
def device_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, min_time_s: float) -> tuple[int, float]:
    """(iterations, seconds per iteration) after warm-up: >= 2 iterations and ``min_time_s``."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    if time.perf_counter() - t0 < min_time_s / 4:  # cheap call: two more warm-up calls
        fn()
        fn()
        sync(device)
    iters, t0 = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        if iters >= 2 and elapsed >= min_time_s:
            return iters, elapsed / iters


def matmul_peak_tflops(device: str, precision: str, min_time_s: float) -> float:
    """Measured dense peak: square matmul (CPU 1024, CUDA 8192); int8 = ``torch._int_mm``,
    the int8 x int8 -> int32 GEMM the W8A8 encoder runs."""
    n = 8192 if device == "cuda" else 1024
    if precision == "int8":
        qa = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=device)
        qb = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=device)
        _, s = time_fn(lambda: torch._int_mm(qa, qb), device, min_time_s)
        return 2 * n**3 / s / 1e12
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    a = torch.randn(n, n, device=device, dtype=dtype[precision])
    b = torch.randn(n, n, device=device, dtype=dtype[precision])
    _, s = time_fn(lambda: a @ b, device, min_time_s)
    return 2 * n**3 / s / 1e12


def encoder_flops(cfg: PretrainedConfig, batch: int, length: int) -> float:
    """Forward FLOPs of a BERT-style encoder: projections + FFN + attention scores/values."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 4 * length * h
    return float(layers * batch * length * per_token_layer)


# -- the runs ---------------------------------------------------------------------------------
def batch_sizes(length: int, max_batch: int, max_batch_tokens: int) -> list[int]:
    top = max(1, min(max_batch, max_batch_tokens // length))
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= top]
    return sizes if sizes[-1] == top else [*sizes, top]


def make_hf(model_dir: Path, num_labels: int, device: str, precision: str) -> Callable:
    hf = AutoModelForSequenceClassification.from_pretrained(
        str(version_dir(model_dir)), num_labels=num_labels, local_files_only=True
    )
    hf = hf.to(device=device, dtype=getattr(torch, precision)).eval()

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(hf(input_ids=ids, attention_mask=mask).logits.float()).cpu()

    return forward


def make_ours(model: torch.nn.Module) -> Callable:
    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(ids, mask).float().cpu()

    return forward


def run(args: argparse.Namespace) -> dict:
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    variants: list[tuple[str, str, Callable]] = []
    hf_cfg = None
    max_len = 512
    for p in precisions:
        loaded = load_for_bench(args.model_dir, device, p)
        hf_cfg = loaded.moderation_model.encoder.config
        max_len = loaded.cfg.max_length_tokens
        variants.append((f"ours-{p}", p, make_ours(loaded.model)))  # what the engine runs
    for p in [x for x in (args.ort_precisions or "").split(",") if x]:
        ort = load_for_bench(args.model_dir, device, p, backend="onnxruntime")
        variants.append((f"ort-{p}", p, make_ours(ort.model)))
    num_labels = len(loaded.cfg.labels)
    for p in args.hf_precisions.split(","):
        variants.insert(0, (f"hf-{p}", p, make_hf(args.model_dir, num_labels, device, p)))
    assert hf_cfg is not None
    lengths = sorted({min(n, max_len) for n in args.lengths})
    precs = sorted({v[1] for v in variants})
    peaks = {p: matmul_peak_tflops(device, p, args.min_time_s) for p in precs}
    grid = [
        (n, b)
        for n in lengths
        for b in args.batch_sizes or batch_sizes(n, args.max_batch, args.max_batch_tokens)
    ]
    points: list[Point] = []
    gen = torch.Generator().manual_seed(0)
    for n, b in tqdm(grid, desc="model core", unit="pt", file=sys.stderr):
        ids = torch.randint(1000, 20000, (b, n), generator=gen).to(device)
        mask = torch.ones(b, n, dtype=torch.int64, device=device)
        best: dict[str, tuple[int, float]] = {}
        for _ in range(args.repeats):  # variants interleaved, best of --repeats: noise-robust
            for name, _, fwd in variants:
                it_s = time_fn(functools.partial(fwd, ids, mask), device, args.min_time_s)
                best[name] = min(best.get(name, it_s), it_s, key=lambda x: x[1])
        for name, prec, _ in variants:
            iters, s = best[name]
            tflops = encoder_flops(hf_cfg, b, n) / s / 1e12
            points.append(Point(name, prec, n, b, iters, s * 1e3, b / s, b * n / s, tflops, 0.0))
    # peak = the better of a measurement before and after the grid (robust to a busy start)
    peaks = {p: max(peaks[p], matmul_peak_tflops(device, p, args.min_time_s)) for p in precs}
    for pt in points:
        pt.mfu = pt.tflops / peaks[pt.precision]
    return {
        "command": "python -m benchmarks.model_core " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "versions": versions(),
        "model_dir": str(args.model_dir),
        "note": args.note,
        "encoder": {k: getattr(hf_cfg, k) for k in ("hidden_size", "num_hidden_layers")},
        "peak_tflops": peaks,
        "headline": headline(points),
        "points": [asdict(p) for p in points],
    }


def machine(device: str) -> dict:
    info = {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    import transformers

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    out["transformers"] = transformers.__version__
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def headline(points: list[Point]) -> dict:
    """tokens/s of every variant over the fp32 HF baseline at batch 32 x 64 tokens."""
    at = {p.variant: p.tokens_per_s for p in points if (p.batch_size, p.length_tokens) == HEADLINE}
    base = at.get("hf-float32")
    if not base:
        return {}
    return {
        "batch_size": HEADLINE[0],
        "length_tokens": HEADLINE[1],
        "tokens_per_s": at,
        "speedup_vs_hf_float32": {k: round(v / base, 3) for k, v in at.items()},
    }


# -- output -----------------------------------------------------------------------------------
def table(points: list[dict]) -> str:
    head = f"{'variant':<16}{'len':>5}{'batch':>6}{'ms/batch':>10}{'seq/s':>10}"
    head += f"{'tok/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
    rows = [head, "-" * len(head)]
    for p in points:
        rows.append(
            f"{p['variant']:<16}{p['length_tokens']:>5}{p['batch_size']:>6}"
            f"{p['ms_per_batch']:>10.2f}{p['sequences_per_s']:>10.1f}{p['tokens_per_s']:>11.0f}"
            f"{p['tflops']:>9.3f}{p['mfu']:>7.1%}"
        )
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    lengths = sorted({p["length_tokens"] for p in pts})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.6), squeeze=False)
    for ax, n in zip(axes[0], lengths, strict=True):
        for v in sorted({p["variant"] for p in pts}):
            sel = [p for p in pts if p["variant"] == v and p["length_tokens"] == n]
            ax.plot([p["batch_size"] for p in sel], [p["tokens_per_s"] for p in sel], "o-", label=v)
        ax.set(title=f"{n} tokens", xlabel="batch size", xscale="log", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("tokens/s")
    axes[0][-1].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"model core: {m.get('gpu') or m['cpu_model']} ({result['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model_repo/<name> or a bare HF encoder dir (default: packaged MiniLM)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precisions", default=None, help="ours, comma separated (default by device)")
    ap.add_argument("--hf-precisions", default=None, help="plain HF baselines (default by device)")
    ap.add_argument(
        "--ort-precisions",
        default=None,
        help="ONNX Runtime backend, comma separated (CPU default float32,int8 where "
        "onnxruntime is installed; '' = none)",
    )
    ap.add_argument(
        "--lengths",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[16, 64, 128, 512],
        help="tokens; capped at the model's max length",
    )
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="explicit batch sizes (default: powers of two up to the max)",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="best of N interleaved rounds (noisy machines)"
    )
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--min-time-s", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    ap.add_argument("--quick", action="store_true", help="lengths 16,64; batch <= 32; 0.3 s")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. contention)")
    return ap  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible to torch", file=sys.stderr)
        return 2
    args.model_dir = args.model_dir or packaged_encoder_dir()
    if args.precisions is None:
        args.precisions = DEFAULT_PRECISIONS[args.device]
        if args.device == "cpu" and has_native_bf16():
            args.precisions += ",bfloat16"
    if args.ort_precisions is None:
        args.ort_precisions = "float32,int8" if args.device == "cpu" and ort_available() else ""
    args.hf_precisions = args.hf_precisions or DEFAULT_HF_PRECISIONS[args.device]
    if args.quick:
        args.lengths, args.max_batch, args.min_time_s = [16, 64], min(args.max_batch, 32), 0.3
    result = run(args)
    print(table(result["points"]))
    print(json.dumps({"peak_tflops": result["peak_tflops"], **result["headline"]}, indent=1))
    stem = f"model_core-{device_slug(args.device)}-{result['date'][:10]}"
    if args.quick:
        stem += "-quick"
    save_json_and_plot(result, args.out_dir, stem, lambda path: plot(result, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
