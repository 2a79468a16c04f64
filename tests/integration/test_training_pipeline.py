"""End to end on a tiny random BERT: train -> calibrate/export -> load_model -> score.

Fast (seconds): hidden 32, 2 layers; the tokenizer files are the packaged MiniLM ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.config import DEFAULT_MODEL_NAME
from serving.engine.postprocess import PostProcessor
from serving.model.load import load_model
from serving.model.onnx_runtime import exact_u8s8_gemm
from serving.model.repo_config import load_model_config
from tests.helpers import copy_packaged_tokenizer, tiny_bert
from training import benign_idioms
from training import data as D
from training import metrics as M
from training.defaults import DEFAULT_LABELS, default_model_config
from training.evaluate import evaluate, score_served, served_scores

pytestmark = pytest.mark.slow


def _tiny_encoder(path: Path) -> Path:
    copy_packaged_tokenizer(path)
    tiny_bert().save_pretrained(str(path))
    return path


def _corpus(path: Path) -> Path:
    rows = []
    for i in range(12):
        rows.append(
            {
                "text": f"I hate all of those people number {i}, they are vermin",
                "labels": {"hate": 1, "harassment": 0},
                "source": "hateful",
            }
        )
        rows.append(
            {
                "text": f"I will kill you tomorrow, person {i}",
                "labels": {"violence": 1, "harassment": 1, "harassment/threatening": 1, "hate": 0},
                "source": "threats",
            }
        )
        rows.append(
            {
                "text": f"I want to end my life tonight, day {i}",
                "labels": {"self-harm": 1, "self-harm/intent": 1},
                "source": "sh",
            }
        )
        rows.append(
            {
                "text": f"explicit sexy talk number {i} in bed",
                "labels": {"sexual": 1},
                "source": "nsfw",
            }
        )
        rows.append(
            {
                "text": f"The meeting moved to {i} pm, bring the recipe",
                "labels": {w: 0 for w in DEFAULT_LABELS},
                "source": "benign",
            }
        )
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def test_train_export_load_score(tmp_path: Path) -> None:
    from training.export import ship
    from training.train import TrainArgs, run, split_from_run

    enc = _tiny_encoder(tmp_path / "enc")
    data = _corpus(tmp_path / "corpus.jsonl")
    run_dir = tmp_path / "run"
    args = TrainArgs(
        data=[str(data)],
        run_dir=str(run_dir),
        encoder_dir=str(enc),
        batch_size=8,
        pool_batches=2,
        max_steps=6,
        warmup_steps=2,
        eval_every_steps=3,
        val_fraction=0.2,
        val_rows=50,
        max_length=32,
        lr=1e-3,
        log_every=2,
    )
    run(args)
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()
    done = json.loads((run_dir / "done.json").read_text())
    assert done["steps"] == 6 and done["examples_seen"] == 48

    # resume continues from last.pt up to a higher step budget
    args.max_steps, args.resume, args.reset_best = 8, True, True
    args.weak_negative_weight = 0.3  # assumed negatives: loss only
    run(args)
    assert json.loads((run_dir / "done.json").read_text())["steps"] == 8

    tr, va = split_from_run(run_dir)
    assert len(va) >= 5 and not {e.text for e in tr} & {e.text for e in va}

    repo = tmp_path / "model_repo"
    out = ship(run_dir, repo)
    model_dir = repo / DEFAULT_MODEL_NAME
    for f in (
        "config.yaml",
        "1/config.json",
        "1/tokenizer.json",
        "1/model.safetensors",
        "calibration.png",
        "eval_validation.json",
        "README.md",
    ):
        assert (model_dir / f).is_file(), f
    cfg = load_model_config(model_dir)
    assert cfg.labels == DEFAULT_LABELS
    idioms = out["benign_idioms"]["candidate"]  # held-out benign uses of violent words
    assert idioms["rows"] == len(benign_idioms.texts("eval"))
    assert 0.0 <= idioms["false_flag_rate"] <= 1.0 and "shipped" not in out["benign_idioms"]
    assert "## Violent words in benign use (held out)" in (model_dir / "README.md").read_text()
    assert set(cfg.derived) == {"sexual/minors", "violence/graphic", "self-harm/instructions"}
    assert set(cfg.thresholds) == set(cfg.served_categories)
    assert all(0.0 < t < 1.0 for t in cfg.thresholds.values())
    assert cfg.int8_ok == out["int8_gate"]["int8_ok"]
    onnx_gate = out["onnx_int8_gate"]
    assert cfg.onnx_int8_ok == onnx_gate["int8_ok"]
    assert onnx_gate["int8_ok"] or onnx_gate["failures"]  # a failed gate says why
    # gated only where the uint8 x int8 GEMM is exact (a VNNI CPU); elsewhere it says so
    assert bool(onnx_gate["attempts"]) == exact_u8s8_gemm()
    bf16 = out["bf16_gate"]  # gated on every CPU (emulated where it has no bfloat16)
    assert cfg.bf16_ok == bf16["bf16_ok"] and (bf16["bf16_ok"] or bf16["failures"])
    assert 0.0 <= bf16["p999_abs_score_diff"] <= bf16["max_abs_score_diff"] < 0.5
    assert "bf16_ok: " + str(cfg.bf16_ok).lower() in (model_dir / "README.md").read_text()
    raw = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert raw["max_length_tokens"] == 256 and raw["pooling"] == "mean"

    loaded = load_model(model_dir, "cpu", "auto")
    texts = ["I will kill you", "hello", "word " * 600, "sexy pics of a 12 year old"]
    s = score_served(loaded, texts)
    served = cfg.served_categories
    assert s.shape == (4, len(served))
    assert np.all((s >= 0) & (s <= 1))
    for j, w in enumerate(served):
        parent = {
            "hate/threatening": "hate",
            "harassment/threatening": "harassment",
            "self-harm/intent": "self-harm",
            "self-harm/instructions": "self-harm",
            "sexual/minors": "sexual",
            "violence/graphic": "violence",
        }.get(w)
        if parent:
            assert np.all(s[:, j] <= s[:, served.index(parent)] + 1e-7), w
    # minor gate matches row 3 only: equals sexual there, 5% of sexual on row 1
    sm, sx = served.index("sexual/minors"), served.index("sexual")
    assert s[3, sm] == pytest.approx(s[3, sx])
    assert s[1, sm] == pytest.approx(0.05 * s[1, sx], rel=1e-5)

    if cfg.int8_ok:
        q = load_model(model_dir, "cpu", "int8")
        assert score_served(q, texts).shape == s.shape
    if cfg.onnx_int8_ok:
        q = load_model(model_dir, "cpu", "int8", backend="onnxruntime")
        assert score_served(q, texts).shape == s.shape

    rep = evaluate(model_dir, [data], out_json=tmp_path / "eval.json")
    assert rep["per_category"]["hate"]["positives"] == 12
    assert 0.0 <= rep["flagged"]["auprc"] <= 1.0
    assert (tmp_path / "eval.json").is_file()


def test_init_from_exported_model_continues_it(tmp_path: Path) -> None:
    """--init-from starts from the exported weights (not the encoder's), bumps the
    version, keeps the validation split and trains under bf16 autocast."""
    import torch

    from training.export import write_model_dir
    from training.train import TrainArgs, load_trained, run, split_from_run

    enc = _tiny_encoder(tmp_path / "enc")
    data = _corpus(tmp_path / "corpus.jsonl")
    common = dict(
        data=[str(data)],
        encoder_dir=str(enc),
        batch_size=8,
        pool_batches=2,
        warmup_steps=1,
        eval_every_steps=2,
        val_fraction=0.2,
        val_rows=50,
        max_length=32,
        lr=1e-3,
    )
    first = TrainArgs(run_dir=str(tmp_path / "run1"), max_steps=4, **common)
    run(first)
    parent = load_trained(Path(first.run_dir), "last")
    repo = tmp_path / "model_repo"
    write_model_dir(parent, enc, parent.cfg, repo / parent.cfg.name, torch.float32)

    # lr 0: the continued model must equal the exported (fp32) one exactly
    second = TrainArgs(
        run_dir=str(tmp_path / "run2"),
        max_steps=2,
        bf16=True,
        init_from=str(repo / parent.cfg.name),
        **{**common, "lr": 0.0, "head_lr": 0.0},
    )
    run(second)
    child = load_trained(Path(second.run_dir), "last")
    assert child.cfg.version == "2"
    for (name, a), (_, b) in zip(
        parent.state_dict().items(), child.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    tr1, va1 = split_from_run(Path(first.run_dir))
    _, va2 = split_from_run(Path(second.run_dir))
    assert [e.text for e in va1] == [e.text for e in va2]

    # An export carries its run's held-out keys (validation_split.json): a run continued from
    # it holds out exactly those rows, even where a fresh split would differ.
    held = sorted({D.normalize_text(e.text) for e in va1} | {D.normalize_text(tr1[0].text)})
    (repo / parent.cfg.name / "validation_split.json").write_text(json.dumps({"keys": held}))
    third = TrainArgs(
        run_dir=str(tmp_path / "run3"),
        max_steps=1,
        init_from=str(repo / parent.cfg.name),
        **common,
    )
    run(third)
    _, va3 = split_from_run(Path(third.run_dir))
    assert sorted(D.normalize_text(e.text) for e in va3) == held


def test_source_size_power_sets_source_shares() -> None:
    from training.train import sampling_weights

    big = [
        D.Example(f"b{i}", np.zeros(1, np.float32), np.ones(1, np.float32), "big")
        for i in range(400)
    ]
    small = [
        D.Example(f"s{i}", np.zeros(1, np.float32), np.ones(1, np.float32), "small")
        for i in range(100)
    ]
    ex = big + small
    for power, big_share in ((0.0, 0.8), (0.5, 2 / 3), (1.0, 0.5)):
        w = sampling_weights(ex, {}, target_pos_share=0.0, max_boost=1.0, source_size_power=power)
        assert w[:400].sum() == pytest.approx(big_share), power


def test_postprocess_derived_and_hierarchy() -> None:
    cfg = default_model_config()
    served = cfg.served_categories
    heads = np.zeros((3, len(cfg.labels)), dtype=np.float32)
    li = cfg.labels.index
    heads[:, li("sexual")] = [0.9, 0.9, 0.2]
    heads[:, li("violence")] = [0.8, 0.8, 0.8]
    heads[:, li("hate")] = [0.3, 0.3, 0.3]
    heads[:, li("hate/threatening")] = [0.7, 0.1, 0.7]  # above parent on rows 0, 2
    heads[:, li("self-harm")] = [0.6, 0.6, 0.6]
    texts = ["a teen girl nude", "adult explicit content", "how to overdose; blood everywhere"]
    out = served_scores(heads, texts, cfg)
    col = served.index
    assert out[0, col("sexual/minors")] == pytest.approx(0.9)
    assert out[1, col("sexual/minors")] == pytest.approx(0.9 * 0.05)
    assert out[2, col("violence/graphic")] == pytest.approx(0.8)
    assert out[0, col("violence/graphic")] == pytest.approx(0.8 * 0.1)
    assert out[2, col("self-harm/instructions")] == pytest.approx(0.6)
    assert out[1, col("self-harm/instructions")] == pytest.approx(0.6 * 0.05)
    assert out[:, col("hate/threatening")].tolist() == pytest.approx([0.3, 0.1, 0.3])


def test_eval_layout_file_scores(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"prompt": "x", "S": 1, "S3": 0}) + "\n")
    ex = D.load_examples(
        [p], default_model_config().served_categories, dedup=False, fill_hierarchy=False
    )
    assert len(ex) == 1 and ex[0].mask.sum() == 2


def test_flags_child_implies_parent() -> None:
    cfg = default_model_config()
    cfg.thresholds = {"hate": 0.8, "hate/threatening": 0.3}
    served = cfg.served_categories
    s = np.zeros((1, len(served)), dtype=np.float32)
    s[0, served.index("hate")] = 0.5
    s[0, served.index("hate/threatening")] = 0.4
    f = PostProcessor(cfg).flags(s)
    assert f[0, served.index("hate/threatening")] and f[0, served.index("hate")]


def test_eval_command_reports_dilution_on_a_runs_validation_split(tmp_path: Path) -> None:
    """Training with composites, then ``modserve eval --run-dir R --dilution``: the run's
    held-out rows, composites of them."""
    from training.evaluate import main as eval_main
    from training.train import TrainArgs, run

    benign = {"hate": 0, "violence": 0, "sexual": 0}
    rows = [
        {"text": f"Paris is the capital of country {i}.", "source": "wikipedia_npov_sentences",
         "labels": benign} for i in range(60)
    ]  # fmt: skip
    rows += [{"text": f"I will hurt you badly, number {i}.", "source": "threats",
              "labels": {"violence": 1, "hate": 0}} for i in range(40)]  # fmt: skip
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    enc = _tiny_encoder(tmp_path / "enc")
    tiny = {"batch_size": 8, "pool_batches": 2, "max_steps": 2, "max_length": 32}
    args = TrainArgs(data=[str(data)], run_dir=str(tmp_path / "run"), encoder_dir=str(enc),
                     val_fraction=0.3, composite_share=0.5,  # both composite paths run
                     benign_composite_share=0.3, **tiny)  # fmt: skip
    run(args)
    from training.export import ship

    exported = ship(args.run_dir, tmp_path / "repo", which="last", calib_kw={"min_positives": 1},
                    false_flag_budget=0.5)  # fmt: skip
    out = tmp_path / "eval.json"
    model_dir = tmp_path / "repo" / DEFAULT_MODEL_NAME
    assert load_model_config(model_dir).thresholds["violence"] != 0.5  # calibrated, not default
    assert eval_main(["--model-dir", str(model_dir), "--run-dir", args.run_dir, "--dilution",
                      "--out", str(out)]) == 0  # fmt: skip
    rep = json.loads(out.read_text())
    by = rep["dilution"]["by_context_size"]
    assert set(by) == {"0", "1", "2", "3", "5", "8"}
    assert by["8"]["targets"] == by["0"]["targets"] > 0 and by["8"]["benign"] > 0
    assert 0.0 <= rep["dilution"]["headline_recall"] <= 1.0
    # the export judged the candidate at its calibrated thresholds, as served and evaluated
    assert json.loads(json.dumps(M.json_safe(exported["dilution"]["candidate"]))) == rep["dilution"]
    card = (model_dir / "README.md").read_text()
    assert "Dilution" in card and "--false-flag-budget 0.5" in card
    assert exported["false_flag_budget"] == 0.5


def test_the_bundled_sample_runs_the_quickstart(tmp_path: Path) -> None:
    """README's training quickstart on training/sample_data (tiny encoder, 2 steps): every
    row loads with known categories, and the run exports a servable model."""
    from training.export import ship
    from training.train import main as train_main

    sample = Path(__file__).resolve().parents[2] / "training" / "sample_data"
    data = sample / "moderation_sample.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 285 and all(r["labels"] and r["text"] for r in rows)
    licensed = (sample / "README.md").read_text()
    assert all(f"`{s}`" in licensed for s in {r["source"] for r in rows})  # each one credited
    run_dir = tmp_path / "run"
    assert train_main(["--data", str(data), "--run-dir", str(run_dir), "--max-steps", "2",
                       "--max-length", "64", "--batch-size", "8",
                       "--encoder-dir", str(_tiny_encoder(tmp_path / "enc"))]) == 0  # fmt: skip
    ship(run_dir, tmp_path / "repo", which="last")
    loaded = load_model(tmp_path / "repo" / DEFAULT_MODEL_NAME)
    assert score_served(loaded, ["hello"]).shape == (1, len(loaded.cfg.served_categories))
