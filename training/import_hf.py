"""``modserve import-hf SRC_DIR --name NAME``: a local Hugging Face sequence classifier into
``model_repo/<NAME>/`` (``architecture: hf`` in its config.yaml), served with its own head.

Any architecture ``AutoModelForSequenceClassification`` supports (BERT, RoBERTa, DistilBERT,
DeBERTa-v2, ...): its pooler, dense + tanh, classifier and activation as the checkpoint
defines them (``problem_type``: multi-label -> sigmoid per label, single-label -> softmax;
regression is refused), and its own label names (``id2label``).

* Every weight is used: a weight the architecture does not use, or one it needs that the
  checkpoint lacks (it would be random), fails the import.
* ``--label-map toxic=harassment,threat=violence``: which own labels answer which OpenAI
  categories on ``/v1/moderations`` (a category scores the max of its labels); the rest are
  served by ``POST /v1/classify`` and KServe ``/v2`` only. Unmapped OpenAI categories are
  answered as unscored (``unscored_categories``), never as a silent 0.
* Before anything is written, the model as modserve will serve it (tokenizer, chunking,
  padded batches) scores a few texts, and the import fails unless every score is
  within ``--tolerance`` (1e-5) of transformers' own forward on the same texts.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serving.categories import BY_WIRE
from serving.model.load import load_hf_classifier, load_model
from serving.model.repo_config import ModelConfig, save_model_config
from training.evaluate import score_heads

log = logging.getLogger("training.import_hf")

VERIFY_TEXTS = (
    "I will find you and hurt you.",
    "Thanks for the recipe, the bread came out great!",
    "ok",
    "The council meets on Tuesday to discuss the new bus routes and the library budget.",
    "You are the worst person I have ever met, and everyone here knows it.",
)
POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer")  # pad + 1 slots


def parse_label_map(text: str) -> dict[str, str]:
    """``"toxic=harassment,threat=violence"`` -> {own label: OpenAI category}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        own, sep, wire = part.partition("=")
        if not sep or not own.strip() or not wire.strip():
            raise ValueError(f"--label-map: {part!r} is not LABEL=CATEGORY")
        out[own.strip()] = wire.strip()
    return out


def activation_for(problem_type: str | None, num_labels: int) -> str:
    if problem_type == "regression":
        raise ValueError("a regression head has no class probabilities to moderate with")
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def window_tokens(hf_cfg: object, tokenizer: object, requested: int | None) -> int:
    """The longest input the checkpoint was built for (positions), at most 512."""
    limit = int(getattr(hf_cfg, "max_position_embeddings", 512) or 512)
    if getattr(hf_cfg, "model_type", "") in POSITION_OFFSET_TYPES:
        limit -= int(getattr(hf_cfg, "pad_token_id", 1) or 1) + 1
    tok_max = int(getattr(tokenizer, "model_max_length", limit) or limit)
    window = min(limit, tok_max if tok_max < 100_000 else limit, 512)
    if requested is not None:
        if requested > window:
            raise ValueError(f"--max-length {requested} exceeds the model's {window} positions")
        window = requested
    return window


def reference_scores(src: Path, texts: list[str], activation: str) -> np.ndarray:
    """transformers' own forward on the checkpoint as published: one text at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(str(src), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    model.eval()
    rows = []
    with torch.inference_mode():
        for t in texts:
            logits = model(**tok(t, return_tensors="pt")).logits.float()
            act = torch.softmax(logits, -1) if activation == "softmax" else torch.sigmoid(logits)
            rows.append(act[0].numpy())
    return np.stack(rows)


def served_scores(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The imported model as modserve runs it: loaded from ``model_dir``, chunked, padded
    and batched together, max over chunks (``training.evaluate.score_heads``)."""
    loaded = load_model(model_dir, "cpu", "float32")
    return score_heads(loaded.model, loaded.tokenizer, loaded.cfg, texts)


def import_hf(
    src: Path,
    name: str,
    model_repo: Path,
    label_map: dict[str, str] | None = None,
    version: str = "1",
    threshold: float = 0.5,
    max_length: int | None = None,
    tolerance: float = 1e-5,
) -> Path:
    """Import ``src`` as ``model_repo/<name>`` (see the module docstring); returns its path."""
    src = Path(src)
    model_dir = Path(model_repo) / name
    if (model_dir / version).exists():
        raise FileExistsError(f"{model_dir / version} exists; choose another --name or --version")
    model = load_hf_classifier(src)
    hf_cfg = model.config
    id2label = {int(k): str(v) for k, v in (hf_cfg.id2label or {}).items()}
    labels = [id2label[i] for i in range(len(id2label))]
    label_map = dict(label_map or {})
    for own, wire in label_map.items():
        if own not in labels:
            raise ValueError(f"--label-map: {own!r} is not a label of this model: {labels}")
        if wire not in BY_WIRE:
            raise ValueError(f"--label-map: {wire!r} is not an OpenAI category: {list(BY_WIRE)}")
    activation = activation_for(getattr(hf_cfg, "problem_type", None), len(labels))
    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True, use_fast=True)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"{src}: a fast (Rust) tokenizer is required (tokenizer.json)")
    window = window_tokens(hf_cfg, tokenizer, max_length)
    cfg = ModelConfig(
        name=name,
        version=version,
        description=f"imported from {src.name} ({hf_cfg.model_type}, {hf_cfg.architectures})",
        architecture="hf",
        labels=labels,
        label_map=label_map,
        thresholds=dict.fromkeys(labels, threshold),
        default_threshold=threshold,
        max_length_tokens=window,
        chunk_stride_tokens=min(32, window // 4),
        buckets_tokens=[b for b in (16, 32, 64, 128, 256, 512) if b < window] + [window],
        activation=activation,
    )
    with tempfile.TemporaryDirectory(dir=model_repo if Path(model_repo).is_dir() else None) as t:
        staged = Path(t) / name
        model.save_pretrained(str(staged / version), safe_serialization=True)
        tokenizer.save_pretrained(str(staged / version))
        save_model_config(cfg, staged)
        texts = list(VERIFY_TEXTS)
        ours, theirs = served_scores(staged, texts), reference_scores(src, texts, activation)
        diff = float(np.abs(ours - theirs).max())
        if not diff <= tolerance:
            raise ValueError(
                f"served scores differ from transformers' own forward by {diff:.2e} "
                f"(tolerance {tolerance:.0e}); nothing was written"
            )
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged / version, model_dir / version)
        shutil.copy2(staged / "config.yaml", model_dir / "config.yaml")
    log.info("imported %s as %s (labels %s, %s, max |score diff| %.1e vs transformers)",
             src, model_dir, labels, activation, diff)  # fmt: skip
    return model_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve import-hf", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "src", type=Path, help="local HF checkpoint directory (config, weights, tokenizer)"
    )
    p.add_argument("--name", required=True, help="model folder name in the model repo")
    p.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    p.add_argument("--label-map", default="", help="own=openai pairs, e.g. toxic=harassment")
    p.add_argument("--version", default="1")
    p.add_argument("--threshold", type=float, default=0.5, help="flag threshold of every label")
    p.add_argument("--max-length", type=int, default=None, help="window (default: the model's)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max |score diff| vs transformers")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = build_parser().parse_args(argv)
    try:
        out = import_hf(a.src, a.name, a.model_repo, parse_label_map(a.label_map), a.version,
                        a.threshold, a.max_length, a.tolerance)  # fmt: skip
    except (ValueError, OSError) as e:
        print(f"modserve import-hf: {e}", flush=True)
        return 1
    print(f"imported into {out}; serve it: modserve serve --model-repo {a.model_repo} "
          f"--model {a.name}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
