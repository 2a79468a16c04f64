"""Full fine-tuning of the encoder + multi-label head with masked BCE, on CPU.

Run ``python -m training.train --help``. Knobs and how to tune them:

* ``--max-minutes``: wall-clock budget (counted across ``--resume``). The LR decays
  linearly with ``max(step / max_steps, elapsed / budget)``, so a budget-bound run
  still ends at a low LR. Raise it if you have more CPU time.
* ``--batch-size`` / ``--max-length``: 32 x 128 tokens. Batches are length-bucketed
  (a pool of ``--pool-batches`` batches is sampled, sorted by length, cut, shuffled)
  with dynamic padding, so short texts are cheap.
* ``--lr`` / ``--head-lr``: encoder and head learning rates (AdamW, linear warmup of
  ``--warmup-steps`` then linear decay).
* Sampling: an example's weight is ``source_weight / source_size ** --source-size-power``
  (0.5 = a source's share grows with the square root of its size, so large sources do not
  dominate; 0 = proportional to size, as in a source-stratified validation split; 1 = every
  source equal); categories whose weighted positive share is below
  ``--target-pos-share`` get their positives up-weighted (at most ``--max-boost`` x).
* ``--pos-weight-max``: BCE ``pos_weight = clip(sqrt(neg/pos), 1, max)`` per category,
  measured under the sampling weights.
* ``--weak-negative-weight`` (default 0 = pure masking): loss weight for the *assumed*
  negatives in ``training.data.ASSUMED_NEGATIVES`` (unknown labels that are implausible
  for a source, e.g. ``sexual`` on a hate-speech forum). Metrics never use them. 0.2-0.3
  stops category bleed ("toxic => every category high") without trusting them fully.
* ``--init-from MODEL_DIR``: start from an exported model (``model_repo/<name>``, same
  labels and encoder architecture) with a fresh optimizer, e.g. to continue a shipped
  model when its run dir is gone. Use the same ``--seed`` / ``--val-fraction`` /
  ``--max-val`` / sources as that model's run, or its validation rows leak into training.
* ``--bf16``: bfloat16 autocast for the forward pass (weights and optimizer stay fp32).
  1.5-2x faster steps on CPUs with AVX512-BF16 or AMX; slower on CPUs without them.
* ``--train-heads CAT ...`` (with ``--init-from``): train only these categories' heads
  (a new category, e.g. ``illicit``, starts at zero); the encoder and every other head stay
  bit-identical to the starting model, so nothing it already scores moves. Only rows that
  know a trained category are sampled, and the encoder runs forward-only (in eval mode;
  1.4 s per step on 2 cores, full fine-tuning 2.3 s under ``--bf16``).
* ``--eval-every-minutes`` / ``--val-rows`` / ``--patience``: periodic masked validation
  (mean per-category AUPRC and flagged AUPRC); the best checkpoint is kept in
  ``<run-dir>/best.pt``; training stops after ``patience`` evaluations without gain.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kernels.classification_head import Pooling
from serving.config import DEFAULT_MODEL_NAME
from serving.model.load import ModerationModel, build_model, packaged_encoder_dir
from serving.model.repo_config import ModelConfig
from training import composite as C
from training import data as D
from training import metrics as M
from training.defaults import (
    DEFAULT_LABELS,
    default_model_config,
)

log = logging.getLogger("training.train")

# (input_ids, attention_mask, labels, label mask)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class TrainArgs:
    data: list[str]
    run_dir: str
    encoder_dir: str = ""
    sources_json: str | None = None
    name: str = DEFAULT_MODEL_NAME
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    exclude_license: list[str] = field(default_factory=lambda: list(D.DEFAULT_EXCLUDE_LICENSE))
    include_sources: list[str] = field(default_factory=list)
    exclude_sources: list[str] = field(default_factory=list)
    source_weight: list[str] = field(default_factory=list)
    batch_size: int = 32
    max_length: int = 128
    pool_batches: int = 50
    lr: float = 6e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 100_000
    max_minutes: float = 50.0
    target_pos_share: float = 0.04
    max_boost: float = 8.0
    pos_weight_max: float = 4.0
    weak_negative_weight: float = 0.0
    val_fraction: float = 0.05
    max_val: int = 6000
    val_rows: int = 2500
    eval_every_minutes: float = 10.0
    eval_every_steps: int = 0
    source_size_power: float = 0.5
    init_from: str = ""
    bf16: bool = False
    composite_share: float = 0.0
    benign_composite_share: float = 0.0
    composite_max_context: int = C.MAX_CONTEXT_PARTS
    pooling: Pooling = "mean"
    train_heads: list[str] = field(default_factory=list)
    patience: int = 3
    seed: int = 13
    threads: int = 2
    resume: bool = False
    reset_best: bool = False
    log_every: int = 25


def masked_bce(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None
) -> torch.Tensor:
    """Mean BCE-with-logits over *known* entries only (mask 0 entries contribute nothing)."""
    per = nn.functional.binary_cross_entropy_with_logits(
        logits, labels * mask, reduction="none", pos_weight=pos_weight
    )
    per = per * mask
    return per.sum() / mask.sum().clamp(min=1.0)


def sampling_weights(
    examples: Sequence[D.Example],
    source_weights: dict[str, float],
    target_pos_share: float,
    max_boost: float,
    source_size_power: float = 0.5,
) -> np.ndarray:
    """Per-example sampling weight: source balance x source weight x rare-category boost."""
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[e.source] = sizes.get(e.source, 0) + 1
    w = np.array(
        [
            source_weights.get(e.source, 1.0) / sizes[e.source] ** source_size_power
            for e in examples
        ],
        dtype=np.float64,
    )
    _, y, m = D.stack(examples)
    pos = y * m
    for j in range(y.shape[1]):
        share = float((w * pos[:, j]).sum() / w.sum())
        if 0 < share < target_pos_share:
            boost = min(max_boost, target_pos_share / share)
            w = np.where(pos[:, j] > 0, w * boost, w)
    return w / w.sum()


def pos_weights(examples: Sequence[D.Example], probs: np.ndarray, cap: float) -> np.ndarray:
    _, y, m = D.stack(examples)
    pos = (probs[:, None] * y * m).sum(0)
    neg = (probs[:, None] * (1 - y) * m).sum(0)
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1e-12), 1.0)
    return np.clip(np.sqrt(ratio), 1.0, cap).astype(np.float32)


def encode(tok: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    return tok(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def batches(
    examples: Sequence[D.Example],
    probs: np.ndarray,
    tok: PreTrainedTokenizerBase,
    args: TrainArgs,
    start_pool: int,
) -> Iterator[Batch]:
    """Endless length-bucketed batches sampled with ``probs`` (deterministic per pool).

    With ``--composite-share`` a share of the sampled rows is placed among 1 to
    ``--composite-max-context`` benign context rows (``training.composite``), within
    ``--max-length`` tokens: dilution is learned, not averaged away. With
    ``--benign-composite-share`` another share is replaced by 2 to max-context + 1 benign
    rows alone: long negatives, without which a model learns "long text is harmful" (the
    first composite run flagged 35 % of benign composites).
    """
    pool_no = start_pool
    weak = {e.source for e in examples}
    weak_vecs = {
        s: args.weak_negative_weight * D.assumed_negative_vector(s, args.labels) for s in weak
    }
    empty = np.zeros(0, dtype=np.int64)
    composites = args.composite_share > 0 or args.benign_composite_share > 0
    ctx, ctx_tokens = context_pool(examples, tok) if composites else (empty, empty)
    while True:
        rng = np.random.default_rng(args.seed * 1_000_003 + pool_no)
        idx = rng.choice(len(examples), size=args.batch_size * args.pool_batches, p=probs)
        rows = [row_target(examples[i], weak_vecs, args.weak_negative_weight) for i in idx]
        texts = [examples[i].text for i in idx]
        ids = encode(tok, texts, args.max_length)
        if len(ctx):
            redo = []
            benign = (
                np.flatnonzero(rng.random(len(idx)) < args.benign_composite_share)
                if args.benign_composite_share > 0
                else np.zeros(0, dtype=np.int64)
            )
            for j in benign:  # long negatives: only benign rows, as many as a composite has
                n = int(rng.integers(2, args.composite_max_context + 2))
                parts = C.pick_context(ctx, ctx_tokens, n, args.max_length - 2, rng)
                if len(parts) < 2:
                    continue
                sep = C.SEPARATORS[int(rng.integers(0, len(C.SEPARATORS)))]
                texts[j] = sep.join(examples[p].text for p in parts)
                w = args.weak_negative_weight
                rows[j] = C.combine([row_target(examples[p], weak_vecs, w) for p in parts])
                redo.append(j)
            wrap = np.flatnonzero(rng.random(len(idx)) < args.composite_share)
            for j in np.setdiff1d(wrap, benign):
                room = args.max_length - len(ids[j]) - COMPOSITE_SLACK_TOKENS
                n = int(rng.integers(1, args.composite_max_context + 1))
                parts = C.pick_context(ctx, ctx_tokens, n, room, rng)
                if not parts:
                    continue
                at = int(rng.integers(0, len(parts) + 1))
                sep = C.SEPARATORS[int(rng.integers(0, len(C.SEPARATORS)))]
                texts[j] = C.join(texts[j], [examples[p].text for p in parts], at, sep)
                w = args.weak_negative_weight
                rows[j] = C.combine(
                    [rows[j], *(row_target(examples[p], weak_vecs, w) for p in parts)]
                )
                redo.append(j)
            if redo:
                redone = encode(tok, [texts[j] for j in redo], args.max_length)
                for j, seq in zip(redo, redone, strict=True):
                    ids[j] = seq
        order = np.argsort([len(s) for s in ids], kind="stable")
        chunks = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        rng.shuffle(chunks)
        for ch in chunks:
            x, am = pad([ids[k] for k in ch], int(tok.pad_token_id or 0))
            y = torch.from_numpy(np.stack([rows[k][0] for k in ch]))
            m = torch.from_numpy(np.stack([rows[k][1] for k in ch]))
            yield x, am, y, m
        pool_no += 1


COMPOSITE_SLACK_TOKENS = 4  # joins may tokenize a little differently from the parts alone
CONTEXT_MAX_TOKENS = 64  # context rows are sentences or short paragraphs


def row_target(
    ex: D.Example, weak_vecs: dict[str, np.ndarray], weak_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, loss mask) of one row: known labels, plus assumed negatives at their weight."""
    if weak_weight <= 0:
        return ex.labels, ex.mask
    return ex.labels, ex.mask + weak_vecs[ex.source] * (1.0 - ex.mask)


def context_pool(
    examples: Sequence[D.Example], tok: PreTrainedTokenizerBase
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the benign context rows of ``examples`` and their token counts."""
    cand = [i for i, e in enumerate(examples) if C.is_context(e)]
    lengths = C.token_counts(tok, [examples[i].text for i in cand])
    keep = [k for k, n in enumerate(lengths) if n <= CONTEXT_MAX_TOKENS]
    log.info("composites: %d context rows of <= %d tokens", len(keep), CONTEXT_MAX_TOKENS)
    return np.array([cand[k] for k in keep], dtype=np.int64), np.array(
        [lengths[k] for k in keep], dtype=np.int64
    )


@torch.no_grad()
def predict(
    model: ModerationModel,
    tok: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Sigmoid scores (N, C) with truncation (fast validation; evaluate.py chunks instead)."""
    model.eval()
    ids = encode(tok, texts, max_length)
    order = np.argsort([len(s) for s in ids])
    out = np.zeros((len(texts), len(model.cfg.labels)), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        sel = order[i : i + batch_size]
        x, am = pad([ids[k] for k in sel], int(tok.pad_token_id or 0))
        out[sel] = torch.sigmoid(model.logits(x, am)).numpy()
    return out


def validate(
    model: ModerationModel, tok: PreTrainedTokenizerBase, val: Sequence[D.Example], max_length: int
) -> dict:
    texts, y, m = D.stack(val)
    s = predict(model, tok, texts, max_length)
    cats = M.per_category(y, s, m, list(model.cfg.labels))
    flagged = M.flagged_average_precision(y, s, m)
    mean = M.mean_auprc(cats)
    return {
        "per_category": cats,
        "flagged_auprc": flagged,
        "mean_auprc": mean,
        "score": 0.5 * (flagged + mean),
    }


def _set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(args: TrainArgs) -> tuple[list[D.Example], list[D.Example], dict[str, float]]:
    ex = D.load_examples(
        args.data,
        args.labels,
        args.sources_json,
        args.exclude_license,
        args.include_sources or None,
        args.exclude_sources or None,
    )
    train, val = split_examples(ex, args)
    sw = D.default_source_weights(D.load_sources_meta(args.sources_json))
    sw.update(D.parse_source_weights(args.source_weight))
    return train, val, sw


VALIDATION_SPLIT_FILE = "validation_split.json"  # in the run dir: the held-out rows' keys


def split_examples(ex: list[D.Example], args: TrainArgs) -> tuple[list[D.Example], list[D.Example]]:
    """The run's (train, validation) split, the same every time the run dir is read.

    A new run splits by source (``stratified_split``). With ``--init-from`` the starting
    model's validation rows stay held out: its split is rebuilt from its recorded training
    arguments (a ``stratified_split`` over its own sources and labels, checked against its
    per-source counts) and only sources it never saw are split anew; otherwise rows it was
    trained on would be scored as unseen. The split's keys are written to the run dir.
    """
    path = Path(args.run_dir) / VALIDATION_SPLIT_FILE
    if path.is_file():
        keys = set(json.loads(path.read_text())["keys"])
    elif args.init_from and any(
        (Path(args.init_from) / f).is_file()
        for f in (VALIDATION_SPLIT_FILE, "eval_validation.json")
    ):
        keys = split_keeping_reference(ex, Path(args.init_from), args)
    else:
        if args.init_from:
            log.warning(
                "%s has no eval_validation.json: split as a new run (it is the same split "
                "only if the data and split arguments are unchanged)",
                args.init_from,
            )
        keys = {
            D.normalize_text(e.text)
            for e in D.stratified_split(ex, args.val_fraction, args.seed, args.max_val)[1]
        }
    if args.run_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"keys": sorted(keys)}))
    held = [D.normalize_text(e.text) in keys for e in ex]
    train = [e for e, h in zip(ex, held, strict=True) if not h]
    val = [e for e, h in zip(ex, held, strict=True) if h]
    return train, val


def split_keeping_reference(ex: list[D.Example], model_dir: Path, args: TrainArgs) -> set[str]:
    """Validation keys: ``model_dir``'s own held-out rows, plus a split of newer sources.

    The exported model's ``validation_split.json`` (its run's keys) is used when present;
    older exports have only their training arguments, from which the split is rebuilt."""
    keys_file = model_dir / VALIDATION_SPLIT_FILE
    if keys_file.is_file():
        held = set(json.loads(keys_file.read_text())["keys"])
        known = {e.source for e in ex if D.normalize_text(e.text) in held}
        share = len(held) / max(1, sum(e.source in known for e in ex))
    else:
        held, known, share = rebuild_reference_split(model_dir, args)
    new = [e for e in ex if e.source not in known]
    log.info("validation: %d rows of %s kept, %d sources split anew", len(held), model_dir,
             len({e.source for e in new}))  # fmt: skip
    return held | {D.normalize_text(e.text) for e in D.stratified_split(new, share, args.seed)[1]}


def rebuild_reference_split(model_dir: Path, args: TrainArgs) -> tuple[set[str], set[str], float]:
    """(validation keys, sources, held-out share) of the run ``model_dir`` was exported from,
    rebuilt from its recorded training arguments and checked against its per-source counts."""
    record = json.loads((model_dir / "eval_validation.json").read_text())
    ref = TrainArgs(**record["run"]["train_args"])
    ref_sources = sorted(record["run"]["source_weights"])
    ref_ex = D.load_examples(
        args.data, ref.labels, args.sources_json, ref.exclude_license, ref_sources, None
    )
    _, ref_val = D.stratified_split(ref_ex, ref.val_fraction, ref.seed, ref.max_val)
    counts: dict[str, int] = {}
    for e in ref_val:
        counts[e.source] = counts.get(e.source, 0) + 1
    if counts != record["validation_rows_per_source"]:
        raise ValueError(
            f"--init-from {model_dir}: its validation split cannot be rebuilt from the data "
            "(per-source counts differ); the data changed since it was trained"
        )
    keys = {D.normalize_text(e.text) for e in ref_val}
    return keys, set(ref_sources), len(ref_val) / max(1, len(ref_ex))


@dataclass
class Session:
    """What the training steps share: the run's settings, model, optimizer and progress.

    ``state`` (step, elapsed seconds, pool, best score, bad evals, history) is what
    ``last.pt`` saves and ``--resume`` restores.
    """

    args: TrainArgs
    run_dir: Path
    model: ModerationModel
    tok: PreTrainedTokenizerBase
    opt: torch.optim.Optimizer
    base_lrs: list[float]
    val_sub: list[D.Example]
    state: dict[str, Any]


def load_data(args: TrainArgs) -> tuple[list[D.Example], list[D.Example], dict[str, float]]:
    """Train split, the validation rows for periodic checks, and source weights (logged)."""
    t0 = time.time()
    train, val, sw = prepare_data(args)
    val_sub = D.subsample_stratified(val, args.val_rows, seed=args.seed)
    log.info(
        "data: %d train, %d val (%d for periodic checks), %.0fs",
        len(train),
        len(val),
        len(val_sub),
        time.time() - t0,
    )
    return train, val_sub, sw


def sampling_plan(
    train: Sequence[D.Example], sw: dict[str, float], args: TrainArgs
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling probabilities and per-category BCE pos_weights for ``train`` (logged)."""
    probs = sampling_weights(
        train, sw, args.target_pos_share, args.max_boost, args.source_size_power
    )
    pw = pos_weights(train, probs, args.pos_weight_max)
    log_label_stats(train, probs, pw, args.labels)
    return probs, pw


def log_label_stats(
    train: Sequence[D.Example], probs: np.ndarray, pw: np.ndarray, labels: Sequence[str]
) -> None:
    """Log each category's known positives/negatives, sampled positive share and pos_weight."""
    _, y, m = D.stack(train)
    share = (probs[:, None] * y * m).sum(0) / np.maximum((probs[:, None] * m).sum(0), 1e-12)
    for j, c in enumerate(labels):
        log.info(
            "  %-24s train pos %6d neg %6d | sampled pos share %.3f | pos_weight %.2f",
            c,
            int((y[:, j] * m[:, j]).sum()),
            int(((1 - y[:, j]) * m[:, j]).sum()),
            share[j],
            pw[j],
        )


def write_run_files(
    args: TrainArgs, run_dir: Path, sw: dict[str, float], enc_dir: Path
) -> ModelConfig:
    """Write the run's model config and inputs into ``run_dir``; returns the config.

    ``--resume`` keeps an existing ``model_config.yaml``; otherwise the default config is
    written. ``train_args.json``, ``source_weights.json`` and ``encoder_dir.txt`` are
    (re)written every time.
    """
    cfg_path = run_dir / "model_config.yaml"
    if args.resume and cfg_path.is_file():
        cfg = load_model_config_from_run(run_dir)
    else:
        cfg = default_model_config(args.name, args.labels)
        cfg.pooling = args.pooling
        if args.init_from:  # a continued model is the next version of the one it starts from
            cfg.version = next_version(Path(args.init_from))
        cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (run_dir / "train_args.json").write_text(json.dumps(asdict(args), indent=1))
    (run_dir / "source_weights.json").write_text(json.dumps(sw, indent=1))
    (run_dir / "encoder_dir.txt").write_text(str(enc_dir))
    return cfg


def init_model(enc_dir: Path, cfg: ModelConfig, init_from: str) -> ModerationModel:
    """The pretrained encoder plus a new head, or ``init_from``'s weights when given."""
    model = build_model(enc_dir, cfg)
    if init_from:
        init_from_model_dir(model, Path(init_from))
    return model


def build_optimizer(model: ModerationModel, args: TrainArgs) -> torch.optim.AdamW:
    """AdamW: encoder matrices with weight decay, other encoder params without, head at
    ``--head-lr`` without."""
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    enc_decay = [p for n, p in model.encoder.named_parameters() if p.ndim >= 2]
    enc_nodecay = [p for n, p in model.encoder.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": enc_decay, "lr": args.lr, "weight_decay": args.weight_decay},
            {"params": enc_nodecay, "lr": args.lr, "weight_decay": 0.0},
            {"params": head, "lr": args.head_lr, "weight_decay": 0.0},
        ]
    )


def new_state() -> dict[str, Any]:
    """The progress state of a run that has not taken a step yet."""
    return {
        "step": 0,
        "elapsed": 0.0,
        "pool": 0,
        "best": -1.0,
        "bad_evals": 0,
        "history": [],
    }


def resume_state(
    last: Path, model: ModerationModel, opt: torch.optim.Optimizer, reset_best: bool
) -> dict[str, Any]:
    """Load ``last.pt`` into ``model`` and ``opt``; returns its progress state."""
    ck = torch.load(last, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    state: dict[str, Any] = ck["state"]
    if reset_best:
        state["best"], state["bad_evals"] = -1.0, 0
    log.info(
        "resumed from %s at step %d (%.1f min used)", last, state["step"], state["elapsed"] / 60
    )
    return state


def open_stream(
    train: Sequence[D.Example],
    probs: np.ndarray,
    tok: PreTrainedTokenizerBase,
    args: TrainArgs,
    state: dict[str, Any],
) -> Iterator[Batch]:
    """The training batch stream, from pool ``state["pool"]`` (the one after on ``--resume``)."""
    # --resume starts at a pool no batch has come from yet: the rest of a partly consumed
    # pool is skipped (and an unused one when last.pt was saved on a pool boundary)
    stream = batches(train, probs, tok, args, start_pool=state["pool"] + (1 if args.resume else 0))
    if args.resume:
        state["pool"] += 1
    return stream


def get_lr_factor(step: int, elapsed: float, args: TrainArgs) -> float:
    """LR multiplier for ``step``: linear warmup over ``--warmup-steps`` times a linear decay
    in ``max(step / max_steps, elapsed / budget)``, floored at 0.02."""
    budget = args.max_minutes * 60.0
    progress = max(step / args.max_steps, elapsed / budget)
    warm = min(1.0, (step + 1) / max(1, args.warmup_steps))
    return warm * max(0.02, 1.0 - progress)


def set_lr(opt: torch.optim.Optimizer, base_lrs: Sequence[float], factor: float) -> None:
    """Set each param group's LR to its base LR times ``factor``."""
    for g, lr in zip(opt.param_groups, base_lrs, strict=True):
        g["lr"] = lr * factor


def train_step(
    model: ModerationModel,
    opt: torch.optim.Optimizer,
    batch: Batch,
    pos_weight: torch.Tensor,
    bf16: bool,
    frozen_encoder: bool = False,
) -> float:
    """One optimizer step on ``batch`` (masked BCE, grad norm clipped to 1); returns the loss.
    ``frozen_encoder``: the encoder runs without autograd (``--train-heads``)."""
    x, am, yb, mb = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if frozen_encoder:
            with torch.no_grad():
                hidden = model.encoder(input_ids=x, attention_mask=am).last_hidden_state
            logits = model.head_logits(hidden, am)
        else:
            logits = model.logits(x, am)
    loss = masked_bce(logits.float(), yb, mb, pos_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.item())


def log_step(step: int, loss: float, ema: float, lr: float, minutes: float) -> None:
    """The periodic ``--log-every`` training log line."""
    log.info("step %d loss %.4f (ema %.4f) lr %.2e elapsed %.1f min", step, loss, ema, lr, minutes)


def eval_due(args: TrainArgs, step: int, last_eval: float) -> bool:
    """Every ``--eval-every-steps`` steps when set, else ``--eval-every-minutes`` after the
    last evaluation (``last_eval``, a ``time.time()``)."""
    if args.eval_every_steps:
        return step % args.eval_every_steps == 0
    return time.time() - last_eval >= args.eval_every_minutes * 60


def save_checkpoint(s: Session, path: Path) -> None:
    """Save model, optimizer and progress state (what ``--resume`` loads) to ``path``."""
    torch.save(
        {"model": s.model.state_dict(), "optimizer": s.opt.state_dict(), "state": s.state}, path
    )


def log_validation(res: dict, step: int) -> None:
    """Log a validation result: flagged and mean AUPRC, then each category's AUPRC."""
    cats = " ".join(f"{c}={v['auprc']:.3f}" for c, v in res["per_category"].items())
    log.info(
        "val step %d: flagged AUPRC %.4f mean AUPRC %.4f | %s",
        step,
        res["flagged_auprc"],
        res["mean_auprc"],
        cats,
    )


def evaluate_and_checkpoint(s: Session) -> bool:
    """Validate on the periodic-check rows; keep ``best.pt`` on a gain, write
    ``history.json`` and ``last.pt``. True when ``--patience`` evaluations in a row brought
    no gain (stop early)."""
    state = s.state
    res = validate(s.model, s.tok, s.val_sub, s.args.max_length)
    train_mode(s.model, bool(s.args.train_heads))
    res["step"], res["minutes"] = state["step"], state["elapsed"] / 60
    state["history"].append(dict(res))
    log_validation(res, state["step"])
    if res["score"] > state["best"]:
        state["best"], state["bad_evals"] = res["score"], 0
        torch.save(
            {"model": s.model.state_dict(), "step": state["step"], "val": res},
            s.run_dir / "best.pt",
        )
    else:
        state["bad_evals"] += 1
    (s.run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    save_checkpoint(s, s.run_dir / "last.pt")
    return state["bad_evals"] >= s.args.patience


def train_mode(model: ModerationModel, frozen_encoder: bool) -> None:
    """Training mode (dropout on), except a frozen encoder, which stays in eval mode: the
    heads learn from the token states the server will compute."""
    model.train()
    if frozen_encoder:
        model.encoder.eval()


def freeze_except_heads(model: ModerationModel, heads: Sequence[str]) -> None:
    """Freeze the encoder and every head but ``heads`` (``--train-heads``): their gradients
    are zeroed row by row, and AdamW (no weight decay on the head) leaves a row whose
    gradient is always zero exactly where it was."""
    labels = list(model.cfg.labels)
    unknown = [h for h in heads if h not in labels]
    if unknown:
        raise ValueError(f"--train-heads {unknown}: not in --labels {labels}")
    model.encoder.requires_grad_(False)
    keep = torch.zeros(len(labels))
    keep[[labels.index(h) for h in heads]] = 1.0
    head = model.classifier
    for param in (head.weight, head.bias, head.query):
        if param is not None:
            rows = keep.view(-1, *([1] * (param.ndim - 1)))
            param.register_hook(lambda grad, rows=rows: grad * rows)
    log.info("training only the heads %s (encoder and other heads frozen)", list(heads))


def rows_for_heads(
    examples: Sequence[D.Example], labels: Sequence[str], heads: Sequence[str]
) -> list[D.Example]:
    """The rows whose label is known for at least one of ``heads`` (the others carry no
    loss when only those heads train)."""
    cols = [list(labels).index(h) for h in heads]
    return [e for e in examples if (e.mask[cols] > 0).any()]


def train_loop(s: Session, stream: Iterator[Batch], pos_weight: torch.Tensor) -> str:
    """Train until ``--max-steps``, the time budget or early stopping, evaluating when due;
    returns why it stopped. ``state["elapsed"]`` counts wall time across resumes."""
    args, state = s.args, s.state
    budget = args.max_minutes * 60.0
    session_start = time.time() - state["elapsed"]
    last_eval = time.time()
    ema: float | None = None
    bar = tqdm(
        total=args.max_steps,
        initial=state["step"],
        desc="train",
        mininterval=5,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    train_mode(s.model, bool(args.train_heads))
    stop_reason = "max_steps"
    while state["step"] < args.max_steps:
        state["elapsed"] = time.time() - session_start
        if state["elapsed"] >= budget:
            stop_reason = "time budget"
            break
        batch = next(stream)
        factor = get_lr_factor(state["step"], state["elapsed"], args)
        set_lr(s.opt, s.base_lrs, factor)
        loss = train_step(s.model, s.opt, batch, pos_weight, args.bf16, bool(args.train_heads))
        state["step"] += 1
        if state["step"] % args.pool_batches == 0:
            state["pool"] += 1
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        lr = s.base_lrs[0] * factor
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}", T=batch[0].shape[1])
        if state["step"] % args.log_every == 0:
            log_step(state["step"], loss, ema, lr, (time.time() - session_start) / 60)
        if eval_due(args, state["step"], last_eval):
            state["elapsed"] = time.time() - session_start
            if evaluate_and_checkpoint(s):
                stop_reason = "early stopping"
                break
            last_eval = time.time()
    bar.close()
    state["elapsed"] = time.time() - session_start
    return stop_reason


def finish(s: Session, stop_reason: str) -> None:
    """Final evaluation (unless early stopping just made one), ``last.pt`` and ``done.json``."""
    state = s.state
    if stop_reason != "early stopping":
        evaluate_and_checkpoint(s)
    save_checkpoint(s, s.run_dir / "last.pt")
    log.info(
        "stopped (%s) at step %d after %.1f min; best val score %.4f",
        stop_reason,
        state["step"],
        state["elapsed"] / 60,
        state["best"],
    )
    (s.run_dir / "done.json").write_text(
        json.dumps(
            {
                "stop_reason": stop_reason,
                "steps": state["step"],
                "examples_seen": state["step"] * s.args.batch_size,
                "minutes": state["elapsed"] / 60,
                "best_score": state["best"],
            },
            indent=1,
        )
    )


def run(args: TrainArgs) -> Path:
    """Train; returns the run dir (contains best.pt, last.pt, model_config.yaml, history)."""
    torch.set_num_threads(args.threads)
    _set_seeds(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    enc_dir = Path(args.encoder_dir) if args.encoder_dir else packaged_encoder_dir()
    train, val_sub, sw = load_data(args)
    if args.train_heads:
        if not args.init_from:  # also on --resume: the export takes frozen thresholds from it
            raise ValueError("--train-heads needs --init-from (the model whose heads it keeps)")
        train = rows_for_heads(train, args.labels, args.train_heads)
        log.info("--train-heads: %d training rows know one of %s", len(train), args.train_heads)
    probs, pw = sampling_plan(train, sw, args)
    cfg = write_run_files(args, run_dir, sw, enc_dir)
    tok = AutoTokenizer.from_pretrained(str(enc_dir), local_files_only=True, use_fast=True)
    last = run_dir / "last.pt"
    resuming = args.resume and last.is_file()
    # --init-from only matters for a new run: a resume loads last.pt over the weights
    model = init_model(enc_dir, cfg, "" if resuming else args.init_from)
    if args.train_heads:
        freeze_except_heads(model, args.train_heads)
    opt = build_optimizer(model, args)
    base_lrs = [g["lr"] for g in opt.param_groups]  # taken before a resume loads scaled ones
    state = resume_state(last, model, opt, args.reset_best) if resuming else new_state()
    stream = open_stream(train, probs, tok, args, state)
    s = Session(args, run_dir, model, tok, opt, base_lrs, val_sub, state)
    stop_reason = train_loop(s, stream, torch.from_numpy(pw))
    finish(s, stop_reason)
    return run_dir


def next_version(model_dir: Path) -> str:
    """The version after ``model_dir``'s (``"1"`` -> ``"2"``)."""
    from serving.model.repo_config import load_model_config

    return str(int(load_model_config(model_dir).version) + 1)


NEW_HEAD_BIAS = -4.0  # a head the starting model lacks begins near sigmoid(-4) = 0.02


def init_from_model_dir(model: ModerationModel, model_dir: Path) -> None:
    """Copy an exported model's weights (fp16 on disk) into ``model`` (fp32).

    Heads are matched by category: a category the exported model has no head for (e.g.
    ``illicit``, added later) starts with zero weights and a low bias; heads ``model`` does
    not have are dropped. An attention query the exported model lacks (it pooled by mean)
    starts at zero, which is exactly mean pooling."""
    from serving.model.load import load_model

    src = load_model(model_dir, "cpu", "float32")
    model.encoder.load_state_dict(src.moderation_model.encoder.state_dict())
    old = {w: i for i, w in enumerate(src.cfg.labels)}
    new = [w for w in model.cfg.labels if w not in old]
    with torch.no_grad():
        for j, w in enumerate(model.cfg.labels):
            if w in old:
                model.classifier.weight[j] = src.moderation_model.classifier.weight[old[w]]
                model.classifier.bias[j] = src.moderation_model.classifier.bias[old[w]]
            else:
                model.classifier.weight[j].zero_()
                model.classifier.bias[j] = NEW_HEAD_BIAS
            query, src_query = model.classifier.query, src.moderation_model.classifier.query
            if query is not None:
                query[j] = src_query[old[w]] if src_query is not None and w in old else 0.0
    log.info("initialised from %s (version %s); new heads: %s", model_dir, src.cfg.version, new)


def load_trained(run_dir: Path, which: str = "best") -> ModerationModel:
    """Rebuild the model of a run dir from ``best.pt`` (or ``last.pt``) on CPU, fp32."""
    run_dir = Path(run_dir)
    cfg = load_model_config_from_run(run_dir)
    enc_dir = Path((run_dir / "encoder_dir.txt").read_text().strip())
    model = build_model(enc_dir, cfg)
    ck = torch.load(run_dir / f"{which}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    return model.eval()


def load_model_config_from_run(run_dir: Path) -> ModelConfig:
    with (Path(run_dir) / "model_config.yaml").open() as f:
        return ModelConfig.model_validate(yaml.safe_load(f))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainArgs(data=[], run_dir="")
    p.add_argument("--data", nargs="+", required=True, help="JSONL(.gz) files or directories")
    p.add_argument("--run-dir", required=True, help="checkpoints + logs go here")
    p.add_argument("--encoder-dir", default="", help="HF encoder dir (default: packaged MiniLM)")
    p.add_argument("--sources-json", default=None, help="sources.json for licence/weak flags")
    p.add_argument("--name", default=d.name)
    p.add_argument("--labels", nargs="+", default=d.labels)
    p.add_argument("--exclude-license", nargs="*", default=d.exclude_license)
    p.add_argument("--include-sources", nargs="*", default=[])
    p.add_argument("--exclude-sources", nargs="*", default=[])
    p.add_argument("--source-weight", action="append", default=[], metavar="NAME=W")
    for k in (
        "batch_size",
        "max_length",
        "pool_batches",
        "warmup_steps",
        "max_steps",
        "max_val",
        "val_rows",
        "eval_every_steps",
        "patience",
        "seed",
        "threads",
        "log_every",
        "composite_max_context",
    ):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=getattr(d, k))
    for k in (
        "lr",
        "head_lr",
        "weight_decay",
        "max_minutes",
        "target_pos_share",
        "max_boost",
        "pos_weight_max",
        "val_fraction",
        "eval_every_minutes",
        "weak_negative_weight",
        "source_size_power",
        "composite_share",
        "benign_composite_share",
    ):
        p.add_argument("--" + k.replace("_", "-"), type=float, default=getattr(d, k))
    p.add_argument(
        "--init-from",
        default="",
        metavar="MODEL_DIR",
        help="start from an exported model_repo/<name> (fresh optimizer)",
    )
    p.add_argument(
        "--pooling",
        choices=get_args(Pooling),
        default=d.pooling,
        help="token states -> one vector per category (kernels.classification_head); "
        "attention from a mean-pooled --init-from starts as exactly that model",
    )
    p.add_argument(
        "--train-heads",
        nargs="+",
        default=[],
        metavar="CATEGORY",
        help="with --init-from: train only these heads; the encoder and the other heads "
        "stay exactly as in the starting model",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU AVX512-BF16/AMX)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument(
        "--reset-best",
        action="store_true",
        help="with --resume: forget the best score so far (e.g. after changing loss)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ns = build_parser().parse_args(argv)
    args = TrainArgs(**vars(ns))
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def split_from_run(
    run_dir: Path, labels: Sequence[str] | None = None
) -> tuple[list[D.Example], list[D.Example]]:
    """Rebuild a run's (train, val) split, optionally over a different label list.

    The split is always made over the run's own labels (so it is identical to training);
    with ``labels`` the same rows are re-read with label vectors over ``labels``.
    """
    raw = json.loads((Path(run_dir) / "train_args.json").read_text())
    args = TrainArgs(**raw)
    train, val, _ = prepare_data(args)
    if labels is None or list(labels) == list(args.labels):
        return train, val
    full = D.load_examples(
        args.data,
        list(labels),
        args.sources_json,
        args.exclude_license,
        args.include_sources or None,
        args.exclude_sources or None,
    )
    val_keys = {D.normalize_text(e.text) for e in val}
    train_keys = {D.normalize_text(e.text) for e in train}
    return (
        [e for e in full if D.normalize_text(e.text) in train_keys],
        [e for e in full if D.normalize_text(e.text) in val_keys],
    )
