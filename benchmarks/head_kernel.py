"""Fused head kernel vs torch reference, GB/s of hidden states read (tutorial 02 perf_report).

    python -m benchmarks.head_kernel [--batch-size 64] [--hidden 384] [--classes 13]

GPU only (the Triton interpreter on CPU measures nothing useful). Sweeps the padded
sequence length T; the hidden states (B, T, H) dominate the bytes, so GB/s =
B * T * H * itemsize / time. Writes ``benchmarks/results/head_kernel-<gpu>-<date>.png``
and ``.csv`` (triton's perf_report output).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

from kernels.classification_head import HAS_TRITON, fused_head_scores, head_scores_reference

RESULTS_DIR = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--classes", type=int, default=13)
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    args = ap.parse_args(argv)
    if not (HAS_TRITON and torch.cuda.is_available()):
        print("benchmarks.head_kernel needs CUDA and triton", file=sys.stderr)
        return 2
    import triton
    import triton.testing

    dtype = getattr(torch, args.dtype)
    b, h, c = args.batch_size, args.hidden, args.classes
    w = torch.randn(c, h, device="cuda", dtype=dtype) * h**-0.5
    bias = torch.randn(c, device="cuda")

    @triton.testing.perf_report(
        triton.testing.Benchmark(
            x_names=["T"],
            x_vals=[16, 32, 64, 128, 256, 512],
            line_arg="provider",
            line_vals=["triton", "torch"],
            line_names=["Triton fused", "torch reference"],
            styles=[("blue", "-"), ("green", "-")],
            ylabel="GB/s",
            plot_name=f"head_kernel-B{b}-H{h}-C{c}-{args.dtype}",
            args={},
        )
    )
    def bench(T: int, provider: str) -> tuple[float, float, float]:
        x = torch.randn(b, T, h, device="cuda", dtype=dtype)
        mask = torch.ones(b, T, device="cuda", dtype=torch.int64)
        mask[:, T // 2 + 1 :] = 0  # half padding, as after bucketing

        def fn() -> torch.Tensor:
            if provider == "triton":
                return fused_head_scores(x, mask, w, bias, "mean", "sigmoid")[0]
            return head_scores_reference(x, mask, w, bias, "mean", "sigmoid")

        ms, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        gbps = lambda t: x.numel() * x.element_size() * 1e-9 / (t * 1e-3)  # noqa: E731
        return gbps(ms), gbps(hi), gbps(lo)

    out = RESULTS_DIR / f"head_kernel-{dt.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    bench.run(print_data=True, save_path=str(out))
    print(f"wrote {out}/ ({torch.cuda.get_device_name()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
