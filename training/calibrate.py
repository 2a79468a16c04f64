"""Per-category decision thresholds from validation scores + a reliability plot.

Threshold rule (``choose_threshold``), per trained head, on known validation labels:

* if the category has fewer than ``min_positives`` (default 30) positives, use
  ``fallback`` (0.5): too few positives to tune on;
* otherwise take the threshold maximising F1 among the distinct scores, then clamp it
  into ``[floor, ceiling]`` (default ``[0.2, 0.8]``) so a quirk of the validation
  split cannot ship an extreme threshold. Raise ``floor`` for precision, lower it
  for recall.

Derived categories (no head) inherit their parent's threshold, since their score is
the parent score when the lexicon gate matches.

False-flag budget (``meet_false_flag_budget``, the export's ``--false-flag-budget``): the
F1 thresholds are set on single rows, but users send several sentences at once, and a
text of k benign sentences gets k chances to cross a threshold. Given benign-only composites
of validation rows (``training.dilution``, a seed of its own), thresholds are raised one
head at a time, each time the move that removes the most benign flags per positive lost,
until at most ``budget`` of those composites are flagged.

``python -m training.calibrate --model-dir model_repo/NAME --data FILES...`` (or
``--run-dir runs/X`` to reuse that run's validation split) rewrites ``thresholds`` in
``config.yaml`` and writes ``calibration.png`` next to it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.model.load import load_model
from serving.model.repo_config import ModelConfig, load_model_config, save_model_config
from training import data as D

log = logging.getLogger("training.calibrate")

PLOT_FILE = "calibration.png"


def choose_threshold(
    y: np.ndarray,
    s: np.ndarray,
    floor: float = 0.2,
    ceiling: float = 0.8,
    min_positives: int = 30,
    fallback: float = 0.5,
) -> float:
    """F1-maximising threshold clamped into [floor, ceiling]; ``fallback`` if few positives."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    n_pos = y.sum()
    if n_pos < min_positives:
        return float(fallback)
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp, fp, thr = tp[last], fp[last], ss[last]
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = float(thr[int(np.argmax(f1))])
    return float(min(max(best, floor), ceiling))


def thresholds_for(
    cfg: ModelConfig, labels: np.ndarray, mask: np.ndarray, scores: np.ndarray, **kw: Any
) -> dict[str, float]:
    """Thresholds for every served category; arrays are in ``cfg.served_categories`` order."""
    served = cfg.served_categories
    out: dict[str, float] = {}
    for j, w in enumerate(served):
        if w in cfg.labels:
            keep = mask[:, j] > 0
            out[w] = round(choose_threshold(labels[keep, j], scores[keep, j], **kw), 4)
    for child, rule in cfg.derived.items():
        out[child] = out.get(rule.parent, cfg.default_threshold)
    return {w: out[w] for w in served if w in out}


def meet_false_flag_budget(
    cfg: ModelConfig,
    thresholds: dict[str, float],
    positive_scores: np.ndarray,
    benign_scores: np.ndarray,
    budget: float,
    ceiling: float = 0.99,
    movable: Collection[str] | None = None,
) -> dict[str, float]:
    """``thresholds`` raised until at most ``budget`` of ``benign_scores`` rows are flagged
    (any category), losing as few ``positive_scores`` rows as it can. Arrays are served
    scores (N, C) in ``cfg.served_categories`` order; derived categories follow their
    parent. Greedy: each step moves one head just past one of the next benign scores it
    flags, the move that removes the most benign flags per positive unflagged; when no
    single move removes a flag (rows flagged by several heads), the head flagging the most
    benign rows moves first. ``movable``: the heads it may move (default: all); the others
    keep their thresholds, and their flags count against the budget."""
    served = cfg.served_categories
    col = {w: j for j, w in enumerate(served)}
    heads = [w for w in cfg.labels if w in col and (movable is None or w in movable)]
    family = {w: [col[w]] + [col[c] for c, r in cfg.derived.items() if r.parent == w]
              for w in heads}  # fmt: skip
    out = dict(thresholds)

    def flagged(scores: np.ndarray) -> np.ndarray:
        t = np.array([out.get(w, cfg.default_threshold) for w in served], dtype=np.float32)
        return np.asarray((scores >= t).any(axis=1))

    def set_head(w: str, value: float) -> None:
        for j in family[w]:
            out[served[j]] = value

    while flagged(benign_scores).mean() > budget:
        base_b, base_p = flagged(benign_scores).sum(), flagged(positive_scores).sum()
        moves: list[tuple[float, int, str, float]] = []  # (gain, benign rows at w, head, to)
        for w in heads:
            above = benign_scores[:, col[w]]
            above = np.unique(above[above >= out[w]])
            saved = out[w]
            for value in above[:NEXT_SCORES_TRIED]:
                to = round(float(value) + 1e-4, 4)
                if to > ceiling:
                    break
                set_head(w, to)
                gain_b = base_b - flagged(benign_scores).sum()
                lost_p = base_p - flagged(positive_scores).sum()
                set_head(w, saved)
                moves.append((gain_b / (lost_p + 0.5) if gain_b > 0 else 0.0, len(above), w, to))
        if not moves:  # every head at the ceiling
            break
        gain, _, w, to = max(moves)  # best gain; with none, the head flagging most rows
        if gain == 0.0:
            to = min(m[3] for m in moves if m[2] == w)  # its next score only
        set_head(w, to)
    return out


NEXT_SCORES_TRIED = 8  # per head and step: how far past the next benign scores a move looks


def reliability_plot(
    cfg: ModelConfig,
    labels: np.ndarray,
    mask: np.ndarray,
    scores: np.ndarray,
    path: Path,
    bins: int = 10,
) -> Path:
    """One subplot per trained head: mean predicted score vs observed positive rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = cfg.served_categories
    heads = [w for w in served if w in cfg.labels]
    ncol = 4
    nrow = (len(heads) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.6 * nrow), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for ax, w in zip(axes.ravel(), heads, strict=False):
        j = served.index(w)
        keep = mask[:, j] > 0
        y, s = labels[keep, j], scores[keep, j]
        idx = np.clip(np.digitize(s, edges) - 1, 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            sel = idx == b
            if sel.sum() > 0:
                xs.append(s[sel].mean())
                ys.append(y[sel].mean())
                ns.append(int(sel.sum()))
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.plot(xs, ys, "o-", color="C0")
        for x_, y_, n_ in zip(xs, ys, ns, strict=True):
            ax.annotate(str(n_), (x_, y_), fontsize=6, xytext=(2, 2), textcoords="offset points")
        thr = cfg.threshold(w)
        ax.axvline(thr, color="C3", lw=1, label=f"thr {thr:.2f}")
        ax.set_title(f"{w} (pos {int(y.sum())}/{len(y)})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted score", fontsize=8)
        ax.set_ylabel("observed positive rate", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.ravel()[len(heads) :]:
        ax.axis("off")
    fig.suptitle(f"{cfg.name} v{cfg.version}: reliability on validation (counts per bin)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibrate_arrays(
    model_dir: Path, labels: np.ndarray, mask: np.ndarray, scores: np.ndarray, **kw: Any
) -> ModelConfig:
    """Write thresholds into ``model_dir/config.yaml`` and the plot; returns the new config."""
    cfg = load_model_config(model_dir)
    cfg.thresholds = thresholds_for(cfg, labels, mask, scores, **kw)
    save_model_config(cfg, model_dir)
    reliability_plot(cfg, labels, mask, scores, model_dir / PLOT_FILE)
    log.info("thresholds: %s", cfg.thresholds)
    return cfg


def validation_examples(
    run_dir: str | Path | None, data: Sequence[str] | None, cfg: ModelConfig
) -> list[D.Example]:
    """The run's own validation split (``run_dir``) or the given files, over served labels."""
    if run_dir is not None:
        from training.train import split_from_run

        return split_from_run(Path(run_dir), cfg.served_categories)[1]
    if not data:
        raise ValueError("give --run-dir or --data")
    return D.load_examples(
        data, cfg.served_categories, exclude_license=(), dedup=False, fill_hierarchy=False
    )


def calibrate(
    model_dir: str | Path,
    run_dir: str | Path | None = None,
    data: Sequence[str] | None = None,
    **kw: Any,
) -> ModelConfig:
    from training.evaluate import score_served

    model_dir = Path(model_dir)
    loaded = load_model(model_dir, "cpu", "float32")
    ex = validation_examples(run_dir, data, loaded.cfg)
    texts, y, m = D.stack(ex)
    s = score_served(loaded, texts)
    return calibrate_arrays(model_dir, y, m, s, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", required=True, help="model_repo/<name>")
    p.add_argument("--run-dir", default=None, help="reuse this training run's validation split")
    p.add_argument("--data", nargs="*", default=None, help="or: validation JSONL files/dirs")
    p.add_argument("--floor", type=float, default=0.2)
    p.add_argument("--ceiling", type=float, default=0.8)
    p.add_argument("--min-positives", type=int, default=30)
    p.add_argument("--fallback", type=float, default=0.5)
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    a = build_parser().parse_args(argv)
    cfg = calibrate(
        a.model_dir,
        a.run_dir,
        a.data,
        floor=a.floor,
        ceiling=a.ceiling,
        min_positives=a.min_positives,
        fallback=a.fallback,
    )
    print(cfg.thresholds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
