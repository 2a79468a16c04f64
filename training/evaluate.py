"""Evaluate a model directory exactly as the server scores: chunk, max over chunks, post-process.

``modserve eval --model-dir model_repo/NAME --data FILES... [--out x.json]``, or
``--run-dir runs/X`` for a training run's validation split; ``--dilution`` adds the dilution
evaluation (``training.dilution``: harm placed among benign rows).

Texts longer than the model window are split with ``ChunkingTokenizer`` (window
``max_length_tokens``, overlap ``chunk_stride_tokens``, plus spans if the model config sets
``span_tokens``); a text's head score is the max over its chunks; then ``served_scores``
(the server's ``serving.engine.postprocess.PostProcessor``) adds derived categories and
caps children at parents. Metrics are masked (unknown labels
are ignored); see ``training.metrics``. ``--batch-size`` only trades memory for speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.engine.postprocess import PostProcessor
from serving.engine.tokenization import ChunkingTokenizer, pad_batch
from serving.model.load import LoadedModel, load_model
from serving.model.repo_config import ModelConfig
from training import data as D
from training import metrics as M

log = logging.getLogger("training.evaluate")


@torch.no_grad()
def score_heads(
    model: nn.Module,
    tokenizer,
    cfg: ModelConfig,
    texts: Sequence[str],
    batch_size: int = 64,
) -> np.ndarray:
    """(N, len(cfg.labels)) head scores; long texts chunked, max over chunks."""
    model.eval()
    ct = ChunkingTokenizer.for_model(tokenizer, cfg)
    chunks = ct.chunk_texts(list(texts))
    out = np.zeros((len(texts), len(cfg.labels)), dtype=np.float32)
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].ids))
    for b in range(0, len(order), batch_size):
        sel = [chunks[i] for i in order[b : b + batch_size]]
        length = max(len(c.ids) for c in sel)
        ids, mask = pad_batch([c.ids for c in sel], length, ct.pad_id)
        s = model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        for c, row in zip(sel, s, strict=True):
            out[c.input_index] = np.maximum(out[c.input_index], row)
    return out


def served_scores(heads: np.ndarray, texts: Sequence[str], cfg: ModelConfig) -> np.ndarray:
    """(N, len(cfg.labels)) head scores, already maxed over chunks -> (N, served) scores,
    with derived categories and hierarchy applied exactly as the server does."""
    return PostProcessor(cfg).scores(heads, [1] * len(texts), list(texts))


def score_served(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Final served scores (N, len(cfg.served_categories)) as the server computes them."""
    heads = score_heads(loaded.model, loaded.tokenizer, loaded.cfg, texts, batch_size)
    return served_scores(heads, texts, loaded.cfg)


def served_flags(
    loaded: LoadedModel, texts: Sequence[str], batch_size: int = 64
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(served categories, scores, flags) for ``texts``, as the server answers them."""
    scores = score_served(loaded, texts, batch_size)
    return loaded.cfg.served_categories, scores, PostProcessor(loaded.cfg).flags(scores)


def report(cfg: ModelConfig, labels: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> dict:
    """Metrics dict for served-order ``labels``/``mask``/``scores``."""
    names = cfg.served_categories
    cats = M.per_category(
        labels,
        scores,
        mask,
        names,
        cfg.thresholds,
        cfg.default_threshold,
        predictions=PostProcessor(cfg).flags(scores),
    )
    truth, fscore = M.flagged_truth_and_score(labels, scores, mask, known_only=True)
    _, fscore_all = M.flagged_truth_and_score(labels, scores, mask, known_only=False)
    return {
        "model": cfg.name,
        "version": cfg.version,
        "rows": int(labels.shape[0]),
        "per_category": cats,
        "flagged": {
            "positives": int(truth.sum()),
            "negatives": int(len(truth) - truth.sum()),
            "auprc": M.average_precision(truth, fscore),
            "auprc_max_over_all_categories": M.average_precision(truth, fscore_all),
        },
        "mean_auprc_trained_heads": M.mean_auprc({k: cats[k] for k in cfg.labels}),
    }


def format_table(rep: dict) -> str:
    def f(x: float) -> str:
        return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    rows = [
        [c, str(v["positives"]), str(v["negatives"]), f(v["auprc"]), f(v["f1"]),
         f"{v['threshold']:.2f}"]
        for c, v in rep["per_category"].items()
    ]  # fmt: skip
    fl = rep["flagged"]
    rows.append(["**flagged (any known)**", str(fl["positives"]), str(fl["negatives"]),
                 f(fl["auprc"]), "", ""])  # fmt: skip
    rows.append(["flagged, max over all categories", "", "",
                 f(fl["auprc_max_over_all_categories"]), "", ""])  # fmt: skip
    return M.markdown_table(["category", "pos", "neg", "AUPRC", "F1@thr", "threshold"], rows)


def evaluate_examples(
    loaded: LoadedModel, examples: Sequence[D.Example], batch_size: int = 64
) -> tuple[dict, np.ndarray]:
    """Examples must be over ``loaded.cfg.served_categories``. Returns (report, scores)."""
    texts, y, m = D.stack(examples)
    s = score_served(loaded, texts, batch_size)
    return report(loaded.cfg, y, m, s), s


def evaluate(
    model_dir: str | Path,
    data_paths: Sequence[str | Path],
    out_json: str | Path | None = None,
    dtype: str = "float32",
    batch_size: int = 64,
    max_rows: int | None = None,
    run_dir: str | Path | None = None,
    dilution: bool = False,
) -> dict:
    """Evaluate ``model_dir`` on JSONL files (either layout) or on a training run's
    validation split (``run_dir``); with ``dilution`` also ``training.dilution`` on those
    rows. Prints tables, writes JSON."""
    loaded = load_model(Path(model_dir), "cpu", dtype)
    if run_dir is not None:
        from training.train import split_from_run

        ex = split_from_run(Path(run_dir), loaded.cfg.served_categories)[1]
    else:
        ex = D.load_examples(
            data_paths,
            loaded.cfg.served_categories,
            exclude_license=(),
            dedup=False,
            fill_hierarchy=False,
        )
    if max_rows is not None and len(ex) > max_rows:
        ex = D.subsample_stratified(ex, max_rows)
    rep, _ = evaluate_examples(loaded, ex, batch_size)
    rep["dtype"] = dtype
    rep["data"] = [str(p) for p in data_paths] if run_dir is None else f"{run_dir} (validation)"
    print(format_table(rep))
    if dilution:
        from training import dilution as DL

        dset = DL.build_set(ex, loaded.cfg.served_categories, loaded.tokenizer)
        rep["dilution"] = DL.run(dset, lambda t: served_flags(loaded, t, batch_size))
        print(DL.format_table(rep["dilution"]))
    if out_json is not None:
        Path(out_json).write_text(json.dumps(M.json_safe(rep), indent=1))
    return rep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", required=True, help="model_repo/<name>")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", default=[], help="JSONL(.gz) files or dirs")
    src.add_argument("--run-dir", default=None, help="a training run: its validation split")
    p.add_argument(
        "--dilution",
        action="store_true",
        help="also place the positives among benign rows (training.dilution) and report recall "
        "and false flags by context length and position",
    )
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    p.add_argument("--dtype", default="float32", choices=["float32", "int8"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=None, help="stratified subsample cap")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    a = build_parser().parse_args(argv)
    evaluate(a.model_dir, a.data, a.out, a.dtype, a.batch_size, a.max_rows, a.run_dir, a.dilution)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
