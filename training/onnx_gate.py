"""Gate an exported model's ONNX Runtime int8 graph on its own validation rows.

``modserve export`` runs this gate itself (``training.export.onnx_int8_gate``); this
command runs it for a model exported before the ONNX Runtime backend existed, or again
after a change to the int8 graph:

    python -m training.onnx_gate --run-dir runs/minilm-v5 \\
        --model-dir model_repo/modserve-moderation-minilm

It rebuilds the run's validation split (the rows the export measured), scores them in
float32 torch (the reference) and in each ONNX int8 plan until one passes, then writes
``onnx_int8_ok`` / ``onnx_int8_float_layers`` into the model's config.yaml and the result
into its eval_validation.json (``onnx_int8_gate``). Exit 0 = passed, 1 = failed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from serving.model.load import load_model
from serving.model.quantize import int8_sensitivity, load_smoothing
from serving.model.repo_config import save_model_config
from training import data as D
from training.evaluate import report, score_heads, served_scores
from training.export import onnx_int8_gate, smoothing_texts
from training.gate import limits_for

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from training.train import split_from_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="the training run exported")
    ap.add_argument("--model-dir", type=Path, required=True, help="model_repo/<name>")
    ap.add_argument("--max-val-rows", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    loaded = load_model(args.model_dir, "cpu", "float32", head_kernel="torch")
    cfg = loaded.cfg
    train, val = split_from_run(args.run_dir, cfg.served_categories)
    if args.max_val_rows is not None and len(val) > args.max_val_rows:
        val = D.subsample_stratified(val, args.max_val_rows)
    texts, y, m = D.stack(val)
    log.info("scoring %d validation rows (torch float32)", len(texts))
    s32 = served_scores(score_heads(loaded.model, loaded.tokenizer, cfg, texts), texts, cfg)
    calib = smoothing_texts(train)
    ranked = [
        name
        for name, _ in int8_sensitivity(
            loaded.moderation_model.encoder,
            lambda: score_heads(loaded.model, loaded.tokenizer, cfg, calib),
            load_smoothing(cfg.version_dir(args.model_dir)),
        )
    ]
    gate = onnx_int8_gate(
        args.model_dir, cfg, loaded, texts, y, m, s32, report(cfg, y, m, s32),
        limits_for("int8"), ranked,
    )  # fmt: skip
    save_model_config(cfg, args.model_dir)
    ev = args.model_dir / "eval_validation.json"
    if ev.is_file():
        out = json.loads(ev.read_text())
        out["onnx_int8_gate"] = gate
        ev.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: gate.get(k) for k in ("int8_ok", "float_layers", "attempts")}, indent=1))
    return 0 if gate["int8_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
