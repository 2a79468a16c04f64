"""Export a training run into ``model_repo/<name>/``, calibrate, gate int8, evaluate.

``python -m training.export --run-dir runs/X --model-repo model_repo`` runs the whole
shipping pipeline:

1. rebuild the best checkpoint (``--which last`` for the final one) and write
   ``<name>/config.yaml`` + ``<name>/<version>/`` (config.json, tokenizer files,
   model.safetensors in fp16 via ``serving.model.load.save_weights``);
2. reload it with ``serving.model.load.load_model`` (no network) and score the run's own
   validation split the way the server does (chunking + max + post-processing);
3. calibrate thresholds (``training.calibrate``) and write ``calibration.png``;
4. int8: SmoothQuant factors from 512 training texts (``serving.model.quantize``), written to
   ``<version>/int8_smoothing.safetensors``, then the int8 gate (``training.gate``, the
   same rule as ``benchmarks/accuracy_gate.py``) on the smoothed W8A8 encoder (exactly
   what ``load_model(dtype="int8")`` serves): ``int8_ok`` only if no category and not
   the flagged AUPRC loses more than ``--int8-auprc-drop`` (0.005) against fp32, the flags
   agree on >= 99.5 % of rows and >= 99.8 % of (row, category) pairs, and the 99.9th
   percentile score move is <= 0.05; the same gate for the ONNX Runtime int8 graph
   (``onnx_int8_ok``) and for bfloat16 on CPU (``bf16_ok``, score-move limit 0.03);
5. dilution (``training.dilution``): the candidate and the model ``model_repo`` serves now,
   on the same composites built from the validation split;
6. write ``eval_validation.json`` and the model card ``README.md``.

Everything is written to ``<run dir>/export/<name>`` first. It is promoted into
``model_repo/<name>`` (the served default) only if its dilution recall is at least the
shipped model's and its false flags on benign composites at most 0.01 above the shipped
model's (``--allow-dilution-regression`` overrides); the newest two version folders
are kept. Exit code 1 = measured but not promoted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from serving.model.load import (
    LoadedModel,
    ModerationModel,
    cast_for_serving,
    load_model,
    save_weights,
)
from serving.model.quantize import (
    int8_sensitivity,
    load_smoothing,
    quantize_encoder_int8,
    save_smoothing,
    smoothing_factors,
)
from serving.model.repo_config import ModelConfig, load_model_config, save_model_config
from training import benign_idioms
from training import data as D
from training import dilution as DL
from training import metrics as M
from training.calibrate import calibrate_arrays, meet_false_flag_budget
from training.evaluate import format_table, report, score_heads, served_flags, served_scores
from training.gate import LIMITS, GateLimits, compare, limits_for

log = logging.getLogger("training.export")

SMOOTHING_TEXTS = 512  # training texts the int8 smoothing factors are measured on


def smoothing_texts(train: list[D.Example]) -> list[str]:
    """The training texts int8 calibration runs on (smoothing factors, sensitivity order):
    ``SMOOTHING_TEXTS`` of them, sampled with seed 0, the same on every call."""
    return [e.text for e in random.Random(0).sample(train, min(SMOOTHING_TEXTS, len(train)))]


def write_model_dir(
    model: ModerationModel,
    tokenizer_dir: Path,
    cfg: ModelConfig,
    model_dir: Path,
    weight_dtype: torch.dtype = torch.float16,
) -> Path:
    """config.yaml + <version>/{config.json, tokenizer files, model.safetensors}."""
    vdir = cfg.version_dir(model_dir)
    vdir.mkdir(parents=True, exist_ok=True)
    save_weights(model, vdir, weight_dtype)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, use_fast=True)
    tok.save_pretrained(str(vdir))
    save_model_config(cfg, model_dir)
    return model_dir


def int8_gate(
    cfg: ModelConfig,
    labels: np.ndarray,
    mask: np.ndarray,
    fp32: np.ndarray,
    int8: np.ndarray,
    fp32_rep: dict,
    int8_rep: dict,
    limits: GateLimits = LIMITS["int8"],
    ok_key: str = "int8_ok",
) -> dict:
    """``training.gate.compare`` on served scores and flags, plus the flagged AUPRC drop.

    ``int8`` is any candidate precision's scores. ``ok_key`` (``int8_ok``, ``bf16_ok``) is
    true only if the gate passes and the flagged (any known category) AUPRC drops by no more
    than ``limits.max_auprc_drop`` too.
    """
    served = cfg.served_categories
    res = compare(labels, mask, fp32, int8, served, [cfg.threshold(w) for w in served], limits)
    drops = {
        w: round(c["auprc_drop"], 5)
        for w, c in res["categories"].items()
        if not math.isnan(c["auprc_drop"])
    }
    drops["flagged"] = round(fp32_rep["flagged"]["auprc"] - int8_rep["flagged"]["auprc"], 5)
    failures = list(res["failures"])
    if drops["flagged"] > limits.max_auprc_drop:
        failures.append(f"flagged AUPRC drop {drops['flagged']:.4f}")
    keep = ("limits", "row_flag_agreement", "pair_flag_agreement", "largest_move")
    return {
        "auprc_drop": drops,
        **{k: res[k] for k in keep},
        **{
            k: round(res[k], 5)
            for k in ("p999_abs_score_diff", "p99_abs_score_diff", "max_abs_score_diff")
        },
        "failures": failures,
        ok_key: not failures,
    }


def cross_category_flag_rate(
    cfg: ModelConfig, val: list[D.Example], mask: np.ndarray, scores: np.ndarray
) -> dict[str, dict[str, float]]:
    """Category bleed check: share of rows flagged for a category that is *unknown* for
    them but implausible for their source (``training.data.ASSUMED_NEGATIVES``)."""
    served = cfg.served_categories
    out: dict[str, dict[str, float]] = {}
    for w in cfg.labels:
        j = served.index(w)
        rows = [
            i
            for i, e in enumerate(val)
            if mask[i, j] == 0 and w in D.ASSUMED_NEGATIVES.get(e.source, ())
        ]
        if rows:
            rate = float(np.mean(scores[rows, j] >= cfg.threshold(w)))
            out[w] = {"rows": len(rows), "flag_rate": round(rate, 4)}
    return out


def run_record(run_dir: Path) -> dict[str, Any]:
    """What the run dir says about the run, for ``eval_validation.json`` and the card: its
    ``done``, ``train_args`` and ``source_weights`` files, notes, and validation history."""
    run_info: dict[str, Any] = {}
    for name in ("done.json", "train_args.json", "source_weights.json"):
        p = run_dir / name
        if p.is_file():
            run_info[name.removesuffix(".json")] = json.loads(p.read_text())
    for key in ("notes", "known_issues"):
        if (run_dir / f"{key}.md").is_file():
            run_info[key] = (run_dir / f"{key}.md").read_text().strip()
    hist = run_dir / "history.json"
    if hist.is_file():
        run_info["val_history"] = [
            {
                "step": h["step"],
                "minutes": round(h["minutes"], 1),
                "flagged_auprc": h["flagged_auprc"],
                "mean_auprc": h["mean_auprc"],
                "score": h["score"],
            }
            for h in json.loads(hist.read_text())
        ]
    return run_info


def ship(
    run_dir: str | Path,
    model_repo: str | Path,
    which: str = "best",
    int8_auprc_drop: float = LIMITS["int8"].max_auprc_drop,
    max_val_rows: int | None = None,
    write_card: bool = True,
    calib_kw: dict | None = None,
    allow_dilution_regression: bool = False,
    false_flag_budget: float | None = None,
) -> dict:
    """The whole pipeline; returns ``{"fp32": report, "int8": report, "int8_gate": ...}``."""
    from training.train import VALIDATION_SPLIT_FILE, load_trained, split_from_run

    run_dir = Path(run_dir)
    model = load_trained(run_dir, which)
    cfg = model.cfg
    enc_dir = Path((run_dir / "encoder_dir.txt").read_text().strip())
    model_dir = run_dir / STAGING_DIR / cfg.name  # measured here; promoted if it passes
    write_model_dir(model, enc_dir, cfg, model_dir)
    del model
    log.info("exported %s to %s", which, model_dir)

    loaded = load_model(model_dir, "cpu", "float32")
    train, val = split_from_run(run_dir, loaded.cfg.served_categories)
    if max_val_rows is not None and len(val) > max_val_rows:
        val = D.subsample_stratified(val, max_val_rows)
    texts, y, m = D.stack(val)
    log.info("scoring %d validation rows (fp32)", len(texts))
    s32 = served_scores(
        score_heads(loaded.model, loaded.tokenizer, loaded.cfg, texts), texts, loaded.cfg
    )
    cfg = calibrate_arrays(model_dir, y, m, s32, **(calib_kw or {}))
    run_info = run_record(run_dir)
    train_args = run_info.get("train_args", {})
    trained = train_args.get("train_heads") or None  # None: every head was trained
    if trained:
        cfg = keep_frozen_thresholds(cfg, Path(train_args["init_from"]), trained)
        save_model_config(cfg, model_dir)
    if false_flag_budget is not None:
        positives = s32[(y * m).max(axis=1) > 0]
        cfg = budget_thresholds(loaded, cfg, val, positives, false_flag_budget, trained)
        save_model_config(cfg, model_dir)
    loaded = dataclasses.replace(loaded, cfg=cfg)  # flags below (dilution) at these thresholds
    rep32 = report(cfg, y, m, s32)

    calib = smoothing_texts(train)
    log.info("int8 smoothing factors from %d training texts", len(calib))
    encoder = loaded.moderation_model.encoder

    def run_calibration() -> object:
        return score_heads(loaded.model, loaded.tokenizer, loaded.cfg, calib)

    limits = limits_for("int8", max_auprc_drop=int8_auprc_drop)
    attempts, plans = [], {}
    for kept, alpha in INT8_PLANS:  # the fewest float layers that pass the gate
        if alpha not in plans:
            factors = smoothing_factors(encoder, run_calibration, alpha)
            plans[alpha] = factors, int8_sensitivity(encoder, run_calibration, factors)
        factors, ranked = plans[alpha]
        keep = [name for name, _ in ranked[:kept]]
        log.info("scoring %d validation rows (int8 W8A8, smoothing alpha %.2f, %d Linears kept "
                 "float32)", len(texts), alpha, kept)  # fmt: skip
        qmodel = copy.deepcopy(loaded.moderation_model)
        quantize_encoder_int8(qmodel.encoder, factors, keep_float=keep)
        s8 = served_scores(score_heads(qmodel, loaded.tokenizer, cfg, texts), texts, cfg)
        rep8 = report(cfg, y, m, s8)
        gate = int8_gate(cfg, y, m, s32, s8, rep32, rep8, limits)
        gate.update(float_layers=keep, smoothing_alpha=alpha)
        attempts.append({k: gate[k] for k in ("smoothing_alpha", "float_layers",
                         "row_flag_agreement", "p999_abs_score_diff", "failures")})  # fmt: skip
        if gate["int8_ok"]:
            break
    gate["attempts"] = attempts
    save_smoothing(plans[gate["smoothing_alpha"]][0], cfg.version_dir(model_dir))
    cfg.int8_ok = gate["int8_ok"]
    cfg.int8_float_layers = gate["float_layers"] if cfg.int8_ok else []
    sensitive = [name for name, _ in plans[gate["smoothing_alpha"]][1]]
    ref = Float32Reference(texts, y, m, s32, rep32)
    onnx_gate = onnx_int8_gate(model_dir, cfg, loaded, ref, limits, sensitive)
    bf16 = bf16_gate(cfg, loaded, ref)
    save_model_config(cfg, model_dir)

    bleed = cross_category_flag_rate(cfg, val, m, s32)
    source_counts: dict[str, int] = {}
    for e in val:
        source_counts[e.source] = source_counts.get(e.source, 0) + 1
    by_source = M.flagged_by_source(y, s32, m, [e.source for e in val])
    out: dict[str, Any] = {
        "fp32": rep32,
        "int8": rep8,
        "int8_gate": gate,
        "onnx_int8_gate": onnx_gate,
        "bf16_gate": bf16,
        "checkpoint": which,
        "flagged_by_source": by_source,
        "validation_rows_per_source": source_counts,
        "run": run_info,
        "assumed_negative_flag_rate": bleed,
        "score_max_abs_diff_int8": float(np.abs(s32 - s8).max()) if len(s8) else 0.0,
        "false_flag_budget": false_flag_budget,
    }
    split_file = run_dir / VALIDATION_SPLIT_FILE  # a continued model keeps these held out
    if split_file.is_file():
        shutil.copy2(split_file, model_dir / VALIDATION_SPLIT_FILE)
    shipped_dir = Path(model_repo) / cfg.name
    shipped = (
        load_model(shipped_dir, "cpu", "float32")
        if (shipped_dir / "config.yaml").is_file()
        else None
    )
    out["dilution"] = dilution_against_shipped(loaded, val, shipped)
    out["benign_idioms"] = idioms_against_shipped(loaded, shipped)
    silent = silent_heads(cfg, rep32)
    if silent and shipped is None:  # a first model (or a toy: the quickstart) still ships
        log.warning("heads %s flag none of their validation positives", silent)
    out["promotion"] = promotion_decision(
        out["dilution"], allow_dilution_regression, silent if shipped is not None else []
    )
    (model_dir / "eval_validation.json").write_text(json.dumps(M.json_safe(out), indent=1))
    print(format_table(rep32))
    print("int8 gate:", gate)
    if write_card:
        from training.model_card import write_model_card

        write_model_card(model_dir, cfg, out)
    if out["promotion"]["promoted"]:
        promote(model_dir, shipped_dir, cfg.version)
        log.info("promoted %s version %s to %s", cfg.name, cfg.version, shipped_dir)
    else:
        log.warning("NOT promoted (%s); the candidate stays in %s",
                    out["promotion"]["reason"], model_dir)  # fmt: skip
    return out


@dataclasses.dataclass(frozen=True)
class Float32Reference:
    """The validation rows every precision gate scores, and the float32 torch answers
    (served scores and their report) it compares against."""

    texts: list[str]
    labels: np.ndarray  # (N, C) 0/1
    mask: np.ndarray  # (N, C) 1 = known
    scores: np.ndarray  # (N, C) served float32 scores
    report: dict  # training.evaluate.report of those scores


def bf16_gate(cfg: ModelConfig, loaded: LoadedModel, ref: Float32Reference) -> dict:
    """The same gate for bfloat16 on CPU (what ``MODSERVE_DTYPE=bfloat16`` serves:
    ``serving.model.bf16_cpu``), its p99.9 score-move limit ``training.gate.LIMITS``'
    bfloat16 one; sets ``cfg.bf16_ok``. Runs on any CPU (without AVX512-BF16 / AMX-BF16
    bfloat16 is emulated: slower, the same numbers)."""
    model = cast_for_serving(
        copy.deepcopy(loaded.moderation_model), "bfloat16", torch.device("cpu")
    )
    log.info("scoring %d validation rows (bfloat16)", len(ref.texts))
    s16 = served_scores(score_heads(model, loaded.tokenizer, cfg, ref.texts), ref.texts, cfg)
    rep16 = report(cfg, ref.labels, ref.mask, s16)
    gate = int8_gate(cfg, ref.labels, ref.mask, ref.scores, s16, ref.report, rep16,
                     limits_for("bfloat16"), "bf16_ok")  # fmt: skip
    cfg.bf16_ok = bool(gate["bf16_ok"])
    return gate


ONNX_INT8_PLANS = (0, 2, 4, 8)  # encoder Linears kept float32 (most int8-sensitive first)


def onnx_int8_gate(
    model_dir: Path,
    cfg: ModelConfig,
    loaded: LoadedModel,
    ref: Float32Reference,
    limits: GateLimits,
    ranked: list[str],
) -> dict:
    """The same gate for the ONNX Runtime int8 graph (``serving.model.onnx_export``), its
    plans tried in turn (``ONNX_INT8_PLANS`` float layers, ``ranked`` = the torch int8
    sensitivity order) with 8-bit weights, then the passing plan with 7-bit weights (exact on
    CPUs without VNNI too: ``onnx_export.SATURATION``), kept if it passes as well; sets
    ``cfg.onnx_int8_ok`` / ``onnx_int8_float_layers`` / ``onnx_int8_weight_bits``. Not gated
    (not ok) where onnxruntime is missing or the CPU itself would saturate."""
    import tempfile

    from serving.model.onnx_export import SATURATION, cached_onnx
    from serving.model.onnx_runtime import OnnxRuntimeModel, available, exact_u8s8_gemm

    cfg.onnx_int8_ok, cfg.onnx_int8_float_layers, cfg.onnx_int8_weight_bits = False, [], 8
    if not available():
        return {"int8_ok": False, "failures": ["onnxruntime is not installed"], "attempts": []}
    if not exact_u8s8_gemm():
        return {"int8_ok": False, "attempts": [], "failures": [
            f"not gated on a CPU without VNNI: {SATURATION}; export on a VNNI CPU"]}  # fmt: skip
    vdir = cfg.version_dir(model_dir)
    smoothing = load_smoothing(vdir)
    attempts: list[dict] = []

    def attempt(keep: list[str], bits: int, tmp: str) -> dict:
        path = cached_onnx(lambda: loaded.model, vdir, "int8", smoothing, keep, Path(tmp), bits)
        session = OnnxRuntimeModel(path, torch.get_num_threads())
        log.info("scoring %d validation rows (ONNX Runtime int8, %d-bit weights, %d Linears "
                 "float32)", len(ref.texts), bits, len(keep))  # fmt: skip
        texts, y, m = ref.texts, ref.labels, ref.mask
        s8 = served_scores(score_heads(session, loaded.tokenizer, cfg, texts), texts, cfg)
        gate = int8_gate(cfg, y, m, ref.scores, s8, ref.report, report(cfg, y, m, s8), limits)
        gate.update(float_layers=keep, weight_bits=bits)
        attempts.append({k: gate[k] for k in ("float_layers", "weight_bits",
                         "row_flag_agreement", "p999_abs_score_diff", "failures")})  # fmt: skip
        return gate

    with tempfile.TemporaryDirectory(prefix="modserve-onnx-gate-") as tmp:
        for kept in ONNX_INT8_PLANS:  # 8-bit weights: exact on VNNI CPUs
            gate = attempt(ranked[:kept], 8, tmp)
            if gate["int8_ok"]:
                break
        if gate["int8_ok"]:  # the same plan in 7-bit weights is exact on every x86 CPU
            portable = attempt(gate["float_layers"], 7, tmp)
            gate = portable if portable["int8_ok"] else gate
    gate["attempts"] = attempts
    cfg.onnx_int8_ok = bool(gate["int8_ok"])
    cfg.onnx_int8_float_layers = gate["float_layers"] if cfg.onnx_int8_ok else []
    cfg.onnx_int8_weight_bits = gate["weight_bits"] if cfg.onnx_int8_ok else 8
    return gate


# int8 plans tried in turn until one passes the gate: (encoder Linears kept float32, the most
# int8-sensitive first; SmoothQuant alpha). Fewer float layers = faster int8. Measured on the
# v4 candidate: 0/0.5 99.33 % of rows agree, 4/0.5 99.46 %, 4/0.35 99.62 % (passes).
INT8_PLANS = ((0, 0.5), (0, 0.35), (2, 0.5), (2, 0.35), (4, 0.5), (4, 0.35), (8, 0.35))
STAGING_DIR = "export"  # <run dir>/export/<name>: the candidate, before promotion
KEEP_VERSIONS = 2  # version folders kept in model_repo/<name> (the served one + previous)


CALIBRATION_SEED = 1  # composites for thresholds; the dilution evaluation uses seed 0


def keep_frozen_thresholds(cfg: ModelConfig, start: Path, trained: list[str]) -> ModelConfig:
    """``cfg`` with every head not in ``trained`` (and its derived categories) at the
    threshold of the model the run started from (``train.py --train-heads``): a frozen head
    scores exactly as before, so it keeps the threshold users already tuned against."""
    before = load_model_config(start).thresholds
    thresholds = dict(cfg.thresholds)
    for w in cfg.served_categories:
        head = cfg.derived[w].parent if w in cfg.derived else w
        if head not in trained and w in before:
            thresholds[w] = before[w]
    log.info("frozen heads keep the thresholds of %s", start)
    return cfg.model_copy(update={"thresholds": thresholds})


def budget_thresholds(
    loaded: LoadedModel,
    cfg: ModelConfig,
    val: list[D.Example],
    positive_rows: np.ndarray,
    budget: float,
    movable: list[str] | None = None,
) -> ModelConfig:
    """``cfg`` with thresholds raised until at most ``budget`` of benign-only composites of
    validation rows (``CALIBRATION_SEED``) are flagged (``calibrate.meet_false_flag_budget``),
    giving up as few positives (validation positives alone and inside composites) as it can.
    ``movable``: the heads it may raise (default: all)."""
    dset = DL.build_set(val, cfg.served_categories, loaded.tokenizer, seed=CALIBRATION_SEED)
    log.info("false-flag budget %.3f: scoring %d calibration composites", budget, len(dset.texts))
    scores = served_scores(
        score_heads(loaded.model, loaded.tokenizer, cfg, dset.texts), dset.texts, cfg
    )
    benign = dset.target_id < 0
    thresholds = meet_false_flag_budget(
        cfg, dict(cfg.thresholds), np.concatenate([positive_rows, scores[~benign]]),
        scores[benign], budget, movable=movable,
    )  # fmt: skip
    log.info("thresholds within the false-flag budget: %s", thresholds)
    return cfg.model_copy(update={"thresholds": thresholds})


def dilution_against_shipped(
    loaded: LoadedModel, val: list[D.Example], shipped: LoadedModel | None
) -> dict:
    """``training.dilution`` for the candidate and, on the same composites, for the model
    served now (``shipped``, if any)."""
    try:
        dset = DL.build_set(val, loaded.cfg.served_categories, loaded.tokenizer)
    except ValueError as e:
        return {"skipped": str(e)}
    log.info("dilution: scoring %d composites (candidate)", len(dset.texts))
    out: dict = {"candidate": DL.run(dset, lambda t: served_flags(loaded, t))}
    if shipped is not None:
        log.info("dilution: scoring the same composites with the shipped version %s",
                 shipped.cfg.version)  # fmt: skip
        out["shipped"] = DL.run(dset, lambda t: served_flags(shipped, t))
        out["shipped_version"] = shipped.cfg.version
    print(DL.format_table(out["candidate"]))
    return out


def idioms_against_shipped(loaded: LoadedModel, shipped: LoadedModel | None) -> dict:
    """False flags on the held-out benign idioms (``training.benign_idioms``), for the
    candidate and the model served now."""
    out = {"candidate": benign_idioms.false_flags(lambda t: served_flags(loaded, t))}
    if shipped is not None:
        model = shipped
        out["shipped"] = benign_idioms.false_flags(lambda t: served_flags(model, t))
    return out


MAX_FALSE_FLAG_RISE = 0.01  # benign composites flagged: at most this much more than shipped


def silent_heads(cfg: ModelConfig, rep: dict) -> list[str]:
    """Trained heads that flag none of their validation positives at their threshold (e.g.
    a thin head whose false-flag budget pushed it to 0.97): served, such a head answers
    ``false`` for everything while no longer being named in ``unscored_categories``."""
    cats = rep["per_category"]
    return [
        w for w in cfg.labels if w in cats and cats[w]["positives"] > 0 and not cats[w]["f1"] > 0
    ]


def promotion_decision(
    dilution: dict, allow_regression: bool, silent: list[str] | None = None
) -> dict:
    """Promote unless a trained head flags none of its validation positives (``silent``,
    :func:`silent_heads`, checked when a shipped model would be replaced; never
    overridden), the candidate catches less diluted harm than
    the shipped model, or it buys its recall with false flags (benign composites flagged
    more than ``MAX_FALSE_FLAG_RISE`` above the shipped model's rate)."""
    if silent:
        return {
            "promoted": False,
            "reason": f"heads {silent} flag none of their validation positives at their thresholds",
        }
    cand, shipped = dilution.get("candidate"), dilution.get("shipped")
    if cand is None or shipped is None:
        return {"promoted": True, "reason": "no shipped model to compare dilution with"}
    ours, theirs = cand["headline_recall"], shipped["headline_recall"]
    ff, ff_shipped = cand["headline_false_flag_rate"], shipped["headline_false_flag_rate"]
    problems = []
    if ours < theirs:
        problems.append(f"dilution recall {ours:.3f} < shipped {theirs:.3f}")
    if ff > ff_shipped + MAX_FALSE_FLAG_RISE:
        problems.append(f"false flags on benign composites {ff:.3f} > shipped {ff_shipped:.3f}")
    if not problems:
        return {
            "promoted": True,
            "reason": f"dilution recall {ours:.3f} >= shipped {theirs:.3f}, false flags "
            f"{ff:.3f} (shipped {ff_shipped:.3f})",
        }
    reason = "; ".join(problems)
    return {"promoted": allow_regression, "reason": reason + (" (allowed)" * allow_regression)}


def promote(staged: Path, model_dir: Path, version: str) -> None:
    """Copy the staged model into ``model_dir`` (its version folder and top-level files)
    and keep the newest ``KEEP_VERSIONS`` version folders."""
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staged / version, model_dir / version, dirs_exist_ok=True)
    for f in staged.iterdir():
        if f.is_file():
            shutil.copy2(f, model_dir / f.name)
    versions = sorted((d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                      key=lambda d: int(d.name))  # fmt: skip
    for old in versions[:-KEEP_VERSIONS]:
        shutil.rmtree(old)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", required=True)
    p.add_argument("--model-repo", default="model_repo")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument(
        "--int8-auprc-drop",
        type=float,
        default=LIMITS["int8"].max_auprc_drop,
        help="largest per-category AUPRC drop int8 may have (the rest of training.gate holds)",
    )
    p.add_argument("--max-val-rows", type=int, default=None)
    p.add_argument(
        "--false-flag-budget",
        type=float,
        default=None,
        help="raise thresholds until at most this share of benign-only composites of "
        "validation rows is flagged (e.g. 0.015); default: F1 thresholds on single rows",
    )
    p.add_argument("--no-card", action="store_true", help="do not (re)write README.md")
    p.add_argument(
        "--allow-dilution-regression",
        action="store_true",
        help="promote even if the candidate catches less diluted harm than the shipped model",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    a = build_parser().parse_args(argv)
    out = ship(
        a.run_dir,
        a.model_repo,
        a.which,
        a.int8_auprc_drop,
        a.max_val_rows,
        not a.no_card,
        allow_dilution_regression=a.allow_dilution_regression,
        false_flag_budget=a.false_flag_budget,
    )
    return 0 if out["promotion"]["promoted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
