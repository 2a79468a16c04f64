"""Dilution evaluation: is harm still caught inside long, mixed text?

Built only from validation rows, never from training rows. Each sampled validation positive
(a row with a known positive category) is placed at a random position among ``k`` benign
validation rows, for every ``k`` in ``CONTEXT_SIZES`` (0 = the row alone); benign-only
composites of ``k + 1`` benign rows measure false flags at the same lengths. Benign rows
are the validation rows of ``training.composite.CONTEXT_SOURCES`` with no known positive:
encyclopedia sentences, political statements, medical questions and abstracts, therapy
questions and answers, chat prompts (sensitive topics that are not harmful); rows up to
``MAX_CONTEXT_TOKENS`` long, so some composites are several paragraphs.

Scores come from ``training.evaluate.score_served``: what the server answers (chunking,
span scoring if the model config turns it on, max, derived categories, thresholds).
Reported, per context size and in total:

* ``recall``: share of composites with a target that are flagged (any category);
* ``recall_in_category``: ... flagged in one of the target's own positive categories;
* ``retained``: of the positives flagged on their own, the share still flagged among
  benign rows (dilution apart from what the model misses anyway);
* ``false_flag_rate``: share of benign composites flagged;
* ``auprc``: targets vs benign composites of that size, ranked by the max served score;
* recall by the target's position (start / middle / end of the text).

``headline_recall`` (composites with 1-8 context rows) is what the export compares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from training import composite as C
from training import metrics as M
from training.data import Example

CONTEXT_SIZES: tuple[int, ...] = (0, 1, 2, 3, 5, 8)
MAX_CONTEXT_TOKENS = 160
TARGETS = 400  # validation positives sampled (each appears once per context size)
BENIGN_PER_SIZE = 250


@dataclass(frozen=True)
class DilutionSet:
    texts: list[str]
    context_size: np.ndarray  # (N,) k
    position: list[str]  # "alone" | "start" | "middle" | "end" | "benign"
    target_categories: list[frozenset[str]]  # empty for benign composites
    target_id: np.ndarray  # (N,) which sampled positive the composite holds; -1 = benign


def build_set(
    val: Sequence[Example],
    labels: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    targets: int = TARGETS,
    benign_per_size: int = BENIGN_PER_SIZE,
) -> DilutionSet:
    """The composites for ``val`` rows labelled over ``labels``; deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    ctx = [e for e in val if C.is_context(e)]
    if not ctx:
        raise ValueError("dilution needs benign context rows in the validation split")
    lengths = C.token_counts(tokenizer, [e.text for e in ctx])
    ctx = [e for e, n in zip(ctx, lengths, strict=True) if n <= MAX_CONTEXT_TOKENS]
    pos = [e for e in val if (e.labels * e.mask > 0).any()]
    if not ctx or not pos:
        raise ValueError("dilution needs validation positives and benign context rows")
    chosen = [pos[i] for i in rng.choice(len(pos), size=min(targets, len(pos)), replace=False)]
    texts: list[str] = []
    sizes: list[int] = []
    where: list[str] = []
    cats: list[frozenset[str]] = []
    ids: list[int] = []
    for k in CONTEXT_SIZES:
        for t, ex in enumerate(chosen):
            parts = [ctx[i].text for i in rng.choice(len(ctx), size=k, replace=False)]
            at = int(rng.integers(0, k + 1))
            sep = C.SEPARATORS[int(rng.integers(0, len(C.SEPARATORS)))]
            texts.append(C.join(ex.text, parts, at, sep))
            sizes.append(k)
            where.append(_position(at, k))
            cats.append(frozenset(w for w, y in zip(labels, ex.labels, strict=True) if y > 0))
            ids.append(t)
        if k == 0:
            continue
        for _ in range(benign_per_size):
            parts = [ctx[i].text for i in rng.choice(len(ctx), size=k + 1, replace=False)]
            texts.append(C.SEPARATORS[int(rng.integers(0, len(C.SEPARATORS)))].join(parts))
            sizes.append(k)
            where.append("benign")
            cats.append(frozenset())
            ids.append(-1)
    return DilutionSet(texts, np.array(sizes), where, cats, np.array(ids))


def _position(at: int, k: int) -> str:
    if k == 0:
        return "alone"
    return "start" if at == 0 else "end" if at == k else "middle"


def evaluate(
    dset: DilutionSet, categories: Sequence[str], scores: np.ndarray, flags: np.ndarray
) -> dict:
    """Recall, in-category recall, false flags and AUPRC from served (N, C) scores/flags."""
    col = {w: j for j, w in enumerate(categories)}
    flagged = np.asarray(flags.any(axis=1))
    top = scores.max(axis=1)
    in_cat = np.array(
        [any(flags[i, col[w]] for w in c if w in col) for i, c in enumerate(dset.target_categories)]
    )
    target = np.array([bool(c) for c in dset.target_categories])
    alone = dset.target_id[target & (dset.context_size == 0) & flagged]  # caught on their own
    kept = np.isin(dset.target_id, alone)

    def rates(sel: np.ndarray) -> dict:
        t = np.logical_and(sel, target)
        b = np.logical_and(sel, ~target)
        out: dict[str, float] = {"targets": int(t.sum()), "benign": int(b.sum())}
        if t.any():
            out["recall"] = round(float(flagged[t].mean()), 4)
            out["recall_in_category"] = round(float(in_cat[t].mean()), 4)
            if (t & kept).any():
                out["retained"] = round(float(flagged[t & kept].mean()), 4)
        if b.any():
            out["false_flag_rate"] = round(float(flagged[b].mean()), 4)
            y = np.concatenate([np.ones(int(t.sum())), np.zeros(int(b.sum()))])
            out["auprc"] = round(M.average_precision(y, np.concatenate([top[t], top[b]])), 4)
        return out

    by_size = {str(k): rates(dset.context_size == k) for k in CONTEXT_SIZES}
    pos = np.array(dset.position)
    by_position = {p: rates(pos == p) for p in ("alone", "start", "middle", "end")}
    diluted = dset.context_size > 0
    overall = rates(diluted)
    return {
        "headline_recall": overall["recall"],
        "headline_retained": overall.get("retained", float("nan")),
        "headline_false_flag_rate": overall["false_flag_rate"],
        "all_context": overall,
        "by_context_size": by_size,
        "by_position": by_position,
    }


def run(
    dset: DilutionSet,
    score: Callable[[list[str]], tuple[list[str], np.ndarray, np.ndarray]],
) -> dict:
    """``score(texts) -> (categories, scores, flags)`` on the set, then :func:`evaluate`."""
    categories, scores, flags = score(dset.texts)
    return evaluate(dset, categories, scores, flags)


def format_table(res: dict) -> str:
    """Recall / in-category recall / retained / false flags / AUPRC per context size."""

    def f(r: dict, key: str) -> str:
        return f"{r.get(key, float('nan')):.3f}"

    keys = ("recall", "recall_in_category", "retained", "false_flag_rate", "auprc")
    header = ["context rows", "recall", "in category", "retained", "false flags (benign)", "AUPRC"]
    rows = [[k, *(f(r, key) for key in keys)] for k, r in res["by_context_size"].items()]
    return M.markdown_table(header, rows)
