"""Accuracy gate: does a faster precision score like float32 on a fixed evaluation file?

    python -m benchmarks.accuracy_gate --model-dir model_repo/NAME --data eval.jsonl.gz \\
        [--precisions float32,int8] [--backends torch,onnxruntime] [--device cpu] \\
        [--max-rows 3000] [--out results.json]

Every precision scores the same rows with the model's trained heads (chunked, max over
chunks: ``training.evaluate.score_heads``); float32 is the reference. The rule is
``training.gate`` (the export's int8 gate is the same): a precision FAILS if

* any category's masked AUPRC drops by more than ``--max-auprc-drop`` (0.005, absolute),
* the flags (score >= the model's thresholds) differ from float32's on more than 0.5 % of
  rows or 0.2 % of (row, head) pairs, or
* the 99.9th percentile score move exceeds its limit (``--score-tol``; defaults int8 0.05,
  float16 0.01, bfloat16 0.03). The largest single move is reported, not gated.

Rows are ``{"text", "labels": {category: 0|1}}`` (or the prompt + S/H/V code layout);
an absent category is unknown and masked. Exit code 0 = every precision passed, 1 = a
precision failed (set ``int8_ok: true`` in config.yaml only after a pass), 2 = bad input.
Writes a JSON report (default ``benchmarks/results/accuracy_gate-<model>-<date>.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from pathlib import Path

from benchmarks._models import load_for_bench
from training import data as D
from training.evaluate import score_heads
from training.gate import LIMITS, compare, limits_for

RESULTS_DIR = Path(__file__).parent / "results"


def parse_tols(items: list[str]) -> dict[str, float]:
    """``--score-tol`` values over the default 99.9th-percentile limits per precision."""
    defaults = {p: lim.max_p999_score_move for p, lim in LIMITS.items()}
    return {**defaults, **D.parse_assignments(items, "--score-tol", "precision=value")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--data", nargs="+", required=True, help="JSONL(.gz) files or folders")
    ap.add_argument("--precisions", default="float32,int8")
    ap.add_argument(
        "--backends",
        default="torch",
        help="comma separated: torch, onnxruntime (CPU); every backend x precision is gated "
        "against torch float32 (report keys: 'int8' for torch, 'onnxruntime/int8' ...)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-auprc-drop", type=float, default=LIMITS["int8"].max_auprc_drop)
    ap.add_argument("--score-tol", action="append", default=[], metavar="PRECISION=TOL")
    ap.add_argument("--max-rows", type=int, default=None, help="stratified subsample (seed 0)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tols = parse_tols(args.score_tol)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    ref_model = load_for_bench(args.model_dir, args.device, "float32")
    cfg, names = ref_model.cfg, ref_model.cfg.labels
    ex = D.load_examples(args.data, names, exclude_license=(), dedup=False, fill_hierarchy=False)
    if not ex:
        print(f"no rows with a known label among {names} in {args.data}", file=sys.stderr)
        return 2
    if args.max_rows is not None and len(ex) > args.max_rows:
        ex = D.subsample_stratified(ex, args.max_rows, seed=0)
    texts, y, m = D.stack(ex)
    bs = args.batch_size
    ref = score_heads(ref_model.model, ref_model.tokenizer, cfg, texts, bs)
    report: dict = {
        "command": "python -m benchmarks.accuracy_gate " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": cfg.name,
        "model_dir": str(args.model_dir),
        "data": [str(p) for p in args.data],
        "rows": len(texts),
        "precisions": {},
    }
    ok = True
    paths = [(b, p) for b in args.backends.split(",") for p in args.precisions.split(",")]
    for backend, p in paths:
        name = p if backend == "torch" else f"{backend}/{p}"
        if (backend, p) == ("torch", "float32"):
            loaded = ref_model
        else:
            loaded = load_for_bench(args.model_dir, args.device, p, backend=backend)
        scores = score_heads(loaded.model, loaded.tokenizer, cfg, texts, bs)
        limits = limits_for(
            p, max_auprc_drop=args.max_auprc_drop, max_p999_score_move=tols.get(p, 0.05)
        )
        res = compare(y, m, ref, scores, names, [cfg.threshold(w) for w in names], limits)
        report["precisions"][name] = res
        ok &= res["passed"]
        worst = max((c["auprc_drop"] for c in res["categories"].values()
                     if not math.isnan(c["auprc_drop"])), default=0.0)  # fmt: skip
        print(f"{name:>9}: {'PASS' if res['passed'] else 'FAIL'}  flags agree "
              f"{res['row_flag_agreement']:.2%} of rows  p99.9|Δscore| "
              f"{res['p999_abs_score_diff']:.4f} (max {limits.max_p999_score_move})  "
              f"max|Δscore| {res['max_abs_score_diff']:.4f}  worst AUPRC drop "
              f"{worst:+.4f} (max {args.max_auprc_drop})")  # fmt: skip
        for f in res["failures"]:
            print(f"           {f}")
    report["passed"] = ok
    out = args.out or RESULTS_DIR / f"accuracy_gate-{cfg.name}-{report['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
