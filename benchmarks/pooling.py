"""Which pooling catches harm in long, mixed text: mean, max or attention, on one encoder.

A controlled probe: the shipped model's encoder is frozen and run once over the same
training batches (the recipe of a training run: composites, benign composites, its
sampling), the validation rows and a dilution set built from them
(``training.dilution``); then one head per pooling is trained on the cached token states,
with the same steps, loss and learning rate, starting from the shipped head (a zero
attention query is exactly mean pooling). Only the pooling differs, so the comparison
costs minutes, not a training run per pooling; what full fine-tuning adds on top is
measured by the export of a trained model (``modserve export``).

Reported per pooling: validation flagged AUPRC and mean AUPRC over heads; on the dilution
set (long texts scored as the server does: 256-token windows, max over windows) the
AUPRC of harmful composites against benign ones and the recall at the score that flags
2.5 % of benign composites.

    python -m benchmarks.pooling --run-dir runs/minilm-v7 [--train-batches 120 --steps 600]

Prints a table, writes ``benchmarks/results/pooling-<stamp>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.probes import machine_info
from benchmarks.report import save_json_and_plot
from kernels.classification_head import Pooling, head_logits_reference
from serving.model.load import ClassificationHead, load_model
from training import data as D
from training import metrics as M
from training.dilution import build_set
from training.train import (
    TrainArgs,
    batches,
    masked_bce,
    pad,
    sampling_plan,
    split_from_run,
)

ROOT = Path(__file__).resolve().parents[1]
POOLINGS: tuple[Pooling, ...] = ("mean", "max", "attention")
WINDOW_TOKENS, STRIDE_TOKENS = 256, 32  # the shipped model's window and chunk overlap
FALSE_FLAG_BUDGET = 0.025

States = tuple[torch.Tensor, torch.Tensor]  # (B, T, H) fp16 hidden states, (B, T) mask


@torch.no_grad()
def encode_states(encoder: torch.nn.Module, seqs: list[list[int]], pad_id: int) -> States:
    x, am = pad(seqs, pad_id)
    return encoder(input_ids=x, attention_mask=am).last_hidden_state.half(), am


def windows(ids: list[int], cls: int, sep: int) -> list[list[int]]:
    """Token ids without specials -> the server's overlapping windows, specials added."""
    body = WINDOW_TOKENS - 2
    step = body - STRIDE_TOKENS
    starts = range(0, max(len(ids) - STRIDE_TOKENS, 1), step)
    return [[cls, *ids[s : s + body], sep] for s in starts]


def head_scores(head: ClassificationHead, pooling: Pooling, states: States) -> torch.Tensor:
    h, am = states
    return torch.sigmoid(
        head_logits_reference(h.float(), am, head.weight, head.bias, pooling, head.query)
    )


def fresh_head(shipped: ClassificationHead, pooling: Pooling) -> ClassificationHead:
    head = ClassificationHead(
        shipped.weight.shape[1], shipped.weight.shape[0], pooling == "attention"
    )
    head.load_state_dict({"weight": shipped.weight, "bias": shipped.bias}, strict=False)
    return head


Cached = list[tuple[States, torch.Tensor, torch.Tensor]]  # states, labels, label mask


def train_head(
    head: ClassificationHead, pooling: Pooling, cached: Cached,
    pos_weight: torch.Tensor, steps: int, lr: float, seed: int,
) -> list[float]:  # fmt: skip
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in tqdm(range(steps), desc=f"train {pooling}", leave=False):
        states, y, m = cached[int(rng.integers(len(cached)))]
        h, am = states
        logits = head_logits_reference(h.float(), am, head.weight, head.bias, pooling, head.query)
        loss = masked_bce(logits, y, m, pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def score_rows(head: ClassificationHead, pooling: Pooling, cached: list[States]) -> np.ndarray:
    return torch.cat([head_scores(head, pooling, s) for s in cached]).numpy()


def val_metrics(scores: np.ndarray, y: np.ndarray, m: np.ndarray) -> dict[str, float]:
    per_head = [
        M.average_precision(y[m[:, j] > 0, j], scores[m[:, j] > 0, j])
        for j in range(y.shape[1])
        if (y[m[:, j] > 0, j] > 0).any()
    ]
    known = m.sum(axis=1) > 0
    flagged = (y * m).max(axis=1) > 0
    return {
        "flagged_auprc": round(M.average_precision(flagged[known], scores[known].max(axis=1)), 4),
        "mean_auprc": round(float(np.mean(per_head)), 4),
    }


def dilution_metrics(top: np.ndarray, is_target: np.ndarray, size: np.ndarray) -> dict[str, Any]:
    """``top``: each composite's max score over categories and windows."""
    diluted = size > 0
    t, b = is_target & diluted, ~is_target & diluted
    threshold = float(np.quantile(top[b], 1 - FALSE_FLAG_BUDGET))
    y = np.concatenate([np.ones(int(t.sum())), np.zeros(int(b.sum()))])
    by_size = {
        str(k): round(float((top[is_target & (size == k)] > threshold).mean()), 4)
        for k in sorted(set(size.tolist()))
    }
    return {
        "auprc": round(M.average_precision(y, np.concatenate([top[t], top[b]])), 4),
        "recall_at_2.5pct_false_flags": round(float((top[t] > threshold).mean()), 4),
        "recall_by_context_rows": by_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run-dir", type=Path, required=True, help="a training run: data recipe + split"
    )
    shipped_dir = ROOT / "model_repo" / "modserve-moderation-minilm"
    p.add_argument("--model-dir", type=Path, default=shipped_dir, help="the frozen encoder")
    p.add_argument("--train-batches", type=int, default=120, help="cached training batches")
    p.add_argument("--steps", type=int, default=600, help="head training steps per pooling")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-rows", type=int, default=2000)
    p.add_argument("--targets", type=int, default=100, help="dilution: harmful rows")
    p.add_argument("--benign", type=int, default=60, help="dilution: benign composites per size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()

    targs = TrainArgs(**json.loads((args.run_dir / "train_args.json").read_text()))
    sw = json.loads((args.run_dir / "source_weights.json").read_text())
    train, val = split_from_run(args.run_dir)
    probs, pw = sampling_plan(train, sw, targs)
    loaded = load_model(args.model_dir, "cpu", "float32", head_kernel="torch")
    model = loaded.moderation_model
    encoder, shipped, tok = model.encoder.eval(), model.classifier, loaded.tokenizer
    pad_id = int(tok.pad_token_id or 0)

    gen = batches(train, probs, tok, targs, start_pool=10_000)  # pools training never drew
    cached_train = []
    for _ in tqdm(range(args.train_batches), desc="encode train batches"):
        x, am, y, m = next(gen)
        seqs = [row[: int(n)].tolist() for row, n in zip(x, am.sum(1), strict=True)]
        cached_train.append((encode_states(encoder, seqs, pad_id), y, m))

    val_rows = D.subsample_stratified(val, args.val_rows, seed=0)
    order = sorted(range(len(val_rows)), key=lambda i: len(val_rows[i].text))
    val_rows = [val_rows[i] for i in order]
    ids = tok([e.text for e in val_rows], truncation=True, max_length=WINDOW_TOKENS)["input_ids"]
    cached_val = [
        encode_states(encoder, ids[i : i + 64], pad_id)
        for i in tqdm(range(0, len(ids), 64), desc="encode validation")
    ]
    _, vy, vm = D.stack(val_rows)

    dset = build_set(val, targs.labels, tok, 0, args.targets, args.benign)
    raw = tok(dset.texts, add_special_tokens=False)["input_ids"]
    owner, seqs = [], []
    for i, t in enumerate(raw):
        for w in windows(t, int(tok.cls_token_id), int(tok.sep_token_id)):
            owner.append(i)
            seqs.append(w)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    cached_dil = [
        encode_states(encoder, [seqs[i] for i in order[j : j + 32]], pad_id)
        for j in tqdm(range(0, len(order), 32), desc="encode dilution windows")
    ]
    owner_sorted = np.array(owner)[order]
    is_target = np.array([bool(c) for c in dset.target_categories])
    encode_s = time.time() - t0

    results: dict[str, Any] = {}
    heads: dict[str, tuple[Pooling, ClassificationHead, int]] = {
        "mean (shipped head, untrained)": ("mean", fresh_head(shipped, "mean"), 0)
    }
    heads |= {p: (p, fresh_head(shipped, p), args.steps) for p in POOLINGS}
    for name, (pooling, head, steps) in heads.items():
        losses = train_head(head, pooling, cached_train, torch.from_numpy(pw), steps, args.lr, 1)
        per_window = score_rows(head, pooling, cached_dil).max(axis=1)
        top = np.zeros(len(dset.texts))
        np.maximum.at(top, owner_sorted, per_window)
        results[name] = {
            "pooling": pooling,
            "steps": steps,
            "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
            "validation": val_metrics(score_rows(head, pooling, cached_val), vy, vm),
            "dilution": dilution_metrics(top, is_target, dset.context_size),
        }
        print(name, json.dumps(results[name]))
    res = {
        "command": "python -m benchmarks.pooling " + " ".join(argv or []),
        "machine": machine_info(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "encoder": str(args.model_dir),
        "cached": {
            "train_batches": len(cached_train),
            "val_rows": len(val_rows),
            "dilution_texts": len(dset.texts),
            "dilution_windows": len(seqs),
            "encode_s": round(encode_s, 1),
        },
        "results": results,
    }
    print(table(res))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    save_json_and_plot(res, args.out, f"pooling-{stamp}", lambda path: plot(res, path))
    return 0


def table(res: dict[str, Any]) -> str:
    rows = [
        "| pooling (frozen encoder) | val flagged AUPRC | val mean AUPRC | dilution AUPRC "
        "| dilution recall @ 2.5 % false flags | recall with 1 / 3 / 8 rows |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in res["results"].items():
        d, v = r["dilution"], r["validation"]
        k = d["recall_by_context_rows"]
        rows.append(
            f"| {name} | {v['flagged_auprc']:.3f} | {v['mean_auprc']:.3f} | {d['auprc']:.3f} | "
            f"{d['recall_at_2.5pct_false_flags']:.3f} | "
            f"{k.get('1')} / {k.get('3')} / {k.get('8')} |"
        )
    return "\n".join(rows)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in res["results"].items():
        k = r["dilution"]["recall_by_context_rows"]
        xs = sorted(int(x) for x in k)
        ax.plot(xs, [k[str(x)] for x in xs], marker="o", label=name)
    ax.set(xlabel="benign rows around the harmful one", ylabel="recall @ 2.5 % false flags",
           title="Dilution by pooling (frozen encoder)", ylim=(0, 1))  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
