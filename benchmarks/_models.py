"""Load a model for a benchmark or a gate in any precision (``serving.model.load.load_model``).

Accepts either a model_repo folder (``config.yaml`` + ``<version>/``) or a bare HF
encoder folder (``config.json`` + weights, e.g. the packaged all-MiniLM-L6-v2). A bare
encoder gets a random-init head over all categories, written once to a temp model_repo
folder: fine for speed, meaningless for accuracy. ``int8`` and ``bfloat16`` are allowed here
even when the model's ``int8_ok`` / ``bf16_ok`` is false: the accuracy gate decides those.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from serving.categories import WIRE_NAMES
from serving.model.load import LoadedModel, build_model, load_model, save_weights
from serving.model.onnx_runtime import exact_u8s8_gemm
from serving.model.repo_config import CONFIG_FILE, ModelConfig, load_model_config, save_model_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@functools.cache
def _tmp() -> Path:
    """One scratch folder per process, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="modserve-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def is_model_repo_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def _repo_from_encoder(encoder_dir: Path, max_length_tokens: int) -> Path:
    """model_repo folder around a bare encoder: 13 heads (random init), int8 allowed."""
    model_dir = _tmp() / f"{encoder_dir.name}-bench"
    if model_dir.is_dir():
        return model_dir
    cfg = ModelConfig(
        name=model_dir.name,
        labels=list(WIRE_NAMES),
        max_length_tokens=max_length_tokens,
        chunk_stride_tokens=32,
        int8_ok=True,
        onnx_int8_ok=True,
        bf16_ok=True,
    )
    torch.manual_seed(0)
    model = build_model(encoder_dir, cfg)
    save_weights(model, model_dir / cfg.version, torch.float32)
    for f in TOKENIZER_FILES:
        if (encoder_dir / f).exists():
            shutil.copy(encoder_dir / f, model_dir / cfg.version / f)
    save_model_config(cfg, model_dir)
    return model_dir


def _gates_passed(model_dir: Path) -> Path:
    """Same weights (symlinked version folder) with the int8 and bfloat16 gates marked
    passed, for measuring their speed; on a CPU without VNNI the ONNX graph gets 7-bit weights
    (the same speed, and exact there: ``serving.model.onnx_export.SATURATION``)."""
    cfg = load_model_config(model_dir)
    bits = 8 if exact_u8s8_gemm() else 7
    passed = cfg.int8_ok and cfg.onnx_int8_ok and cfg.bf16_ok
    if passed and (cfg.onnx_int8_weight_bits == 7 or bits == 8):
        return model_dir
    alias = _tmp() / f"{cfg.name}-gated-w{bits}"
    if not alias.is_dir():
        alias.mkdir(parents=True)
        (alias / cfg.version).symlink_to(cfg.version_dir(model_dir).resolve())
        raw = yaml.safe_load((model_dir / CONFIG_FILE).read_text())
        raw["int8_ok"] = raw["onnx_int8_ok"] = raw["bf16_ok"] = True
        raw["onnx_int8_weight_bits"] = min(bits, int(raw.get("onnx_int8_weight_bits", 8)))
        (alias / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return alias


def load_for_bench(
    model_dir: Path,
    device: str,
    precision: str,
    max_length_tokens: int = 512,
    backend: str = "torch",
) -> LoadedModel:
    """``load_model`` for a model_repo folder or a bare encoder, any precision the device
    (and ``backend``) has, gated or not: benchmarks measure speed, the gate decides serving.

    ``max_length_tokens`` is only used for a bare encoder (a model_repo folder has its own).
    """
    if not is_model_repo_dir(model_dir):
        model_dir = _repo_from_encoder(model_dir, max_length_tokens)
    if precision in ("int8", "bfloat16") and device == "cpu":
        model_dir = _gates_passed(model_dir)
    return load_model(model_dir, device=device, dtype=precision, backend=backend)


def version_dir(model_dir: Path) -> Path:
    """Folder with the HF config.json + weights (for the plain HF baseline)."""
    if is_model_repo_dir(model_dir):
        return load_model_config(model_dir).version_dir(model_dir)
    return model_dir
