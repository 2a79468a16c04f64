"""How should ``/v1/evaluate/toxicity`` use the prompt? Measured on labelled prompt/response
pairs, with the served model and no server:

    python -m benchmarks.evaluate_prompt_usage \\
        [--data /work/shared/data/train/beavertails_30k_test_qa.jsonl.gz] \\
        [--model-dir model_repo/modserve-moderation-minilm] [--max-rows N] [--out FILE]

Rows are ``{"text": prompt + blank line + response, "labels": {category: 0|1}}``, the
labels judging the response in its context (BeaverTails QA pairs, third pass of the
corpus); the text is split at its first blank line and rows without one are skipped. Every
row is scored as the server scores an input (chunking, derived categories, hierarchy:
``training.evaluate.score_served``) in four forms: the response alone (the endpoint's
score), the prompt + response ("in context"), the higher of those two per category, and,
for reference only, the prompt alone. Truth is "any known category positive" among the
model's categories, the score the max over the row's known categories
(``training.metrics``: an unknown label is not a negative). For each form: flagged AUPRC
with a 95 % bootstrap interval, and precision / recall of the reject level (score >= 0.6).
Recall and share at the review level (0.3) too, and for the endpoint's rule the rows the
prompt escalates to human review (``serving.gateway.evaluation.prompt_escalates``) and
the rows a person sees or the verdict fails (response >= 0.3, or escalated). Writes a
JSON report (default ``benchmarks/results/evaluate_prompt_usage-<model>-<date>.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.probes import machine_info
from serving.gateway.evaluation import CONTEXT_SEPARATOR, prompt_escalates
from serving.gateway.policy import RiskThresholds
from serving.model.load import load_model
from training import data as D
from training.evaluate import score_served
from training.metrics import average_precision, flagged_truth_and_score, json_safe

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_DATA = Path("/work/shared/data/train/beavertails_30k_test_qa.jsonl.gz")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "model_repo" / "modserve-moderation-minilm"
BOOTSTRAP_ROUNDS = 1000


def split_pairs(texts: list[str]) -> tuple[list[int], list[str], list[str]]:
    """(kept row indices, prompts, responses): each text split at its first blank line."""
    keep, prompts, responses = [], [], []
    for i, text in enumerate(texts):
        prompt, sep, response = text.partition(CONTEXT_SEPARATOR)
        if sep and prompt.strip() and response.strip():
            keep.append(i)
            prompts.append(prompt)
            responses.append(response)
    return keep, prompts, responses


def bootstrap_ci(truth: np.ndarray, score: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the AUPRC over resampled rows (same rows for every form)."""
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(BOOTSTRAP_ROUNDS):
        idx = rng.integers(0, len(truth), len(truth))
        if truth[idx].any():
            aps.append(average_precision(truth[idx], score[idx]))
    lo, hi = np.percentile(aps, [2.5, 97.5])
    return float(lo), float(hi)


def form_report(truth: np.ndarray, score: np.ndarray, t: RiskThresholds) -> dict[str, float]:
    """AUPRC (+ interval); precision, recall and share of rows at the reject level; recall
    and share of rows at the review level (what a person sees or the verdict fails)."""
    rejected, reviewed = score >= t.reject, score >= t.review_needed
    tp = float((rejected & (truth > 0)).sum())
    lo, hi = bootstrap_ci(truth, score)
    return {
        "auprc": average_precision(truth, score),
        "auprc_ci95_low": lo,
        "auprc_ci95_high": hi,
        "precision_at_reject": tp / rejected.sum() if rejected.any() else float("nan"),
        "recall_at_reject": tp / truth.sum(),
        "share_at_reject": float(rejected.mean()),
        "recall_at_review": float((reviewed & (truth > 0)).sum() / truth.sum()),
        "share_at_review": float(reviewed.mean()),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=[DEFAULT_DATA], help="JSONL(.gz) files")
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--max-rows", type=int, default=None, help="random subsample (seed 0)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = load_model(args.model_dir, "cpu", "float32", head_kernel="torch")
    cats = loaded.cfg.served_categories
    ex = D.load_examples(args.data, cats, exclude_license=(), dedup=False)
    if args.max_rows is not None and len(ex) > args.max_rows:
        ex = D.subsample_stratified(ex, args.max_rows, seed=0)
    texts, labels, mask = D.stack(ex)
    keep, prompts, responses = split_pairs(texts)
    if not keep:
        print(f"no prompt/response rows (text with a blank line) in {args.data}", file=sys.stderr)
        return 2
    labels, mask = labels[keep], mask[keep]
    in_context = [p + CONTEXT_SEPARATOR + r for p, r in zip(prompts, responses, strict=True)]
    scored = {
        name: score_served(loaded, batch, args.batch_size)
        for name, batch in (
            ("response", responses),
            ("in_context", in_context),
            ("prompt", prompts),
        )
    }
    scored["max_of_both"] = np.maximum(scored["response"], scored["in_context"])
    thresholds = RiskThresholds()
    forms: dict[str, dict[str, float]] = {}
    row_scores: dict[str, np.ndarray] = {}
    for name in ("response", "in_context", "max_of_both", "prompt"):
        truth, row_scores[name] = flagged_truth_and_score(labels, scored[name], mask)
        forms[name] = form_report(truth, row_scores[name], thresholds)
    escalated = np.array([
        prompt_escalates(float(r), float(c), thresholds)
        for r, c in zip(row_scores["response"], row_scores["in_context"], strict=True)
    ])  # fmt: skip
    seen = (row_scores["response"] >= thresholds.review_needed) | escalated
    served = {
        "score_form": "response",
        "escalated_share": float(escalated.mean()),
        "share_reviewed_or_failed": float(seen.mean()),
        "recall_reviewed_or_failed": float((seen & (truth > 0)).sum() / truth.sum()),
    }
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report = {
        "command": "python -m benchmarks.evaluate_prompt_usage " + shlex.join(sys.argv[1:]),
        "date": date,
        "machine": machine_info(),
        "model": loaded.cfg.name,
        "model_dir": str(args.model_dir),
        "data": [str(p) for p in args.data],
        "rows": len(truth),
        "positives": int(truth.sum()),
        "thresholds": thresholds.model_dump(),
        "forms": forms,
        "served_rule": served,
    }
    print(f"{loaded.cfg.name}: {len(truth)} prompt/response rows, {int(truth.sum())} flagged")
    print(f"{'form':<12} {'AUPRC':>6} {'95% CI':>14}  {'P@0.6':>6} {'R@0.6':>6} {'>=0.6':>6}"
          f"  {'R@0.3':>6} {'>=0.3':>6}")  # fmt: skip
    for name, r in forms.items():
        lo, hi = r["auprc_ci95_low"], r["auprc_ci95_high"]
        print(f"{name:<12} {r['auprc']:6.3f} [{lo:.3f}, {hi:.3f}]  "
              f"{r['precision_at_reject']:6.3f} {r['recall_at_reject']:6.3f} "
              f"{r['share_at_reject']:6.1%}  {r['recall_at_review']:6.3f} "
              f"{r['share_at_review']:6.1%}")  # fmt: skip
    out = args.out or RESULTS_DIR / f"evaluate_prompt_usage-{loaded.cfg.name}-{date[:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=1) + "\n")
    esc, seen = served["escalated_share"], served["share_reviewed_or_failed"]
    print(
        f"served rule: score = response alone; the prompt escalates {esc:.1%} of rows to "
        f"human review; reviewed or failed (response >= 0.3 or escalated): {seen:.1%} of "
        f"rows, recall {served['recall_reviewed_or_failed']:.3f}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
