"""Re-run an exported model's precision gates on its own validation rows.

``modserve export`` runs every gate itself; this command runs the ONNX Runtime int8 and the
bfloat16 gates for a model exported before they existed, or again after a change to the
int8 graph or the bfloat16 kernels:

    python -m training.regate --run-dir runs/minilm-v7 \\
        --model-dir model_repo/modserve-moderation-minilm [--gates onnxruntime-int8 bfloat16]

It rebuilds the run's validation split (the rows the export measured), scores them in
float32 torch (the reference) and in each gated path (ONNX int8: each plan until one
passes), then writes ``onnx_int8_ok`` / ``onnx_int8_float_layers`` / ``bf16_ok`` into the
model's config.yaml and the results into its eval_validation.json (``onnx_int8_gate``,
``bf16_gate``). Exit 0 = every gate run passed, 1 = one failed.
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
from training.export import Float32Reference, bf16_gate, onnx_int8_gate, smoothing_texts
from training.gate import limits_for

log = logging.getLogger(__name__)

GATES = ("onnxruntime-int8", "bfloat16")
OK_KEYS = {"onnx_int8_gate": "int8_ok", "bf16_gate": "bf16_ok"}  # result -> its verdict


def main(argv: list[str] | None = None) -> int:
    from training.train import split_from_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="the training run exported")
    ap.add_argument("--model-dir", type=Path, required=True, help="model_repo/<name>")
    ap.add_argument("--gates", nargs="+", choices=GATES, default=list(GATES))
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
    ref = Float32Reference(texts, y, m, s32, report(cfg, y, m, s32))
    results: dict[str, dict] = {}
    if "onnxruntime-int8" in args.gates:
        calib = smoothing_texts(train)
        ranked = [
            name
            for name, _ in int8_sensitivity(
                loaded.moderation_model.encoder,
                lambda: score_heads(loaded.model, loaded.tokenizer, cfg, calib),
                load_smoothing(cfg.version_dir(args.model_dir)),
            )
        ]
        results["onnx_int8_gate"] = onnx_int8_gate(
            args.model_dir, cfg, loaded, ref, limits_for("int8"), ranked
        )
    if "bfloat16" in args.gates:
        results["bf16_gate"] = bf16_gate(cfg, loaded, ref)
    save_model_config(cfg, args.model_dir)
    ev = args.model_dir / "eval_validation.json"
    if ev.is_file():
        ev.write_text(json.dumps({**json.loads(ev.read_text()), **results}, indent=1))
    passed = {k: bool(g[OK_KEYS[k]]) for k, g in results.items()}
    print(json.dumps({k: {"passed": passed[k], "failures": g.get("failures"),
                          "attempts": g.get("attempts")} for k, g in results.items()},
                     indent=1))  # fmt: skip
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
