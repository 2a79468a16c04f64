"""bfloat16 on CPU (``serving.model.bf16_cpu``): every encoder Linear runs as one oneDNN GEMM
with its epilogue fused, the scores stay float32's within the bfloat16 gate's limit, and a
model is served in bfloat16 only after passing its gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from serving.model import bf16_cpu
from serving.model.load import load_model, resolve_dtype
from serving.model.repo_config import load_model_config, save_model_config

TEXTS = ["I will find you and hurt you", "the weather is nice today", "kill the process", "ok"]

needs_onednn_bf16 = pytest.mark.skipif(
    not bf16_cpu.fused_kernels_available(), reason="oneDNN has no bfloat16 GEMM on this CPU"
)


@pytest.fixture
def bf16_repo(tiny_repo: Path):
    """The tiny model with its bfloat16 gate passed, restored after the test."""
    cfg = load_model_config(tiny_repo / "tiny")
    cfg.bf16_ok = True
    save_model_config(cfg, tiny_repo / "tiny")
    yield tiny_repo / "tiny"
    cfg.bf16_ok = False
    save_model_config(cfg, tiny_repo / "tiny")


def _scores(loaded, texts: list[str]) -> torch.Tensor:
    enc = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return loaded.model(enc["input_ids"], enc["attention_mask"])


@needs_onednn_bf16
@pytest.mark.parametrize("attr,algorithm,act", [("none", "", None), ("gelu", "none", F.gelu)])
def test_packed_linear_is_the_linear_and_its_activation(attr, algorithm, act) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(2, 7, 64, dtype=torch.bfloat16)  # (B, T, H), as the encoder calls it
    want = lin(x).float()
    want = act(want) if act else want
    got = bf16_cpu.PackedLinear(lin, attr, algorithm)(x)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 7, 96)
    torch.testing.assert_close(got.float(), want, atol=0.03, rtol=0.02)


@needs_onednn_bf16
def test_bf16_model_packs_every_linear_and_scores_like_float32(bf16_repo: Path) -> None:
    fp32 = load_model(bf16_repo, "cpu", "float32")
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    encoder = bf16.moderation_model.encoder
    assert not [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    fused = [m for m in encoder.modules() if isinstance(m, bf16_cpu.FusedIntermediate)]
    assert len(fused) == encoder.config.num_hidden_layers  # GELU inside every FFN GEMM
    assert encoder.config._attn_implementation == bf16_cpu.ATTENTION
    head = bf16.moderation_model.classifier
    assert head.weight.dtype == torch.float32  # the head stays float32
    got, want = _scores(bf16, TEXTS), _scores(fp32, TEXTS)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() < 0.03  # the gate's bfloat16 limit (p99.9)


def test_without_fused_kernels_torch_bf16_linears_serve(bf16_repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(bf16_cpu, "fused_kernels_available", lambda: False)
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    encoder = bf16.moderation_model.encoder
    assert not any(isinstance(m, bf16_cpu.PackedLinear) for m in encoder.modules())
    linear = next(m for m in encoder.modules() if isinstance(m, nn.Linear))
    assert linear.weight.dtype == torch.bfloat16
    fp32 = load_model(bf16_repo, "cpu", "float32")
    assert (_scores(bf16, TEXTS) - _scores(fp32, TEXTS)).abs().max().item() < 0.03


def test_bf16_on_cpu_needs_its_gate(tiny_repo: Path) -> None:
    cfg = load_model_config(tiny_repo / "tiny")
    assert not cfg.bf16_ok
    with pytest.raises(ValueError, match="bf16_ok: false"):
        resolve_dtype("bfloat16", torch.device("cpu"), cfg)
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        resolve_dtype("float16", torch.device("cpu"), cfg)
    cfg.bf16_ok = True
    assert resolve_dtype("bfloat16", torch.device("cpu"), cfg) == "bfloat16"
    with pytest.raises(ValueError, match="serves float32 or int8"):
        resolve_dtype("bfloat16", torch.device("cpu"), cfg, backend="onnxruntime")
