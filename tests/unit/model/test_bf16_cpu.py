"""bfloat16 on CPU (``serving.model.bf16_cpu``): every encoder Linear is one oneDNN GEMM with
its epilogue fused, the core is served traced (TorchScript), its scores are the eager model's
and float32's within the bfloat16 gate's limit, a trace that disagrees is never served, and a
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


def _scores(model: nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(enc["input_ids"], enc["attention_mask"])


@needs_onednn_bf16
@pytest.mark.parametrize("attr,algorithm,act", [("none", "", None), ("gelu", "none", F.gelu)])
def test_packed_linear_is_the_linear_and_its_activation(attr, algorithm, act) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(2, 7, 64, dtype=torch.bfloat16)  # (B, T, H), as the encoder calls it
    with torch.no_grad():
        want = lin(x).float()
        got = bf16_cpu.PackedLinear(lin, attr, algorithm)(x)
    want = act(want) if act else want
    assert got.dtype == torch.bfloat16 and got.shape == (2, 7, 96)
    torch.testing.assert_close(got.float(), want, atol=0.03, rtol=0.02)


@needs_onednn_bf16
def test_bf16_encoder_linears_are_packed(bf16_repo: Path) -> None:
    encoder = load_model(bf16_repo, "cpu", "bfloat16").moderation_model.encoder
    assert not [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    fused = [m for m in encoder.modules() if isinstance(m, bf16_cpu.FusedIntermediate)]
    assert len(fused) == encoder.config.num_hidden_layers  # GELU inside every FFN GEMM


def test_bf16_core_is_traced_and_scores_like_float32(bf16_repo: Path) -> None:
    fp32 = load_model(bf16_repo, "cpu", "float32")
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    assert isinstance(bf16.model, bf16_cpu.TracedCore)  # TorchScript: no GIL in the forward
    assert isinstance(bf16.model.small, torch.jit.ScriptModule)
    assert isinstance(bf16.model.large, torch.jit.ScriptModule)
    source = bf16.moderation_model  # the eager model it was traced from
    assert source.encoder.config._attn_implementation == bf16_cpu.ATTENTION
    assert next(source.encoder.parameters()).dtype == torch.bfloat16
    assert source.classifier.weight.dtype == torch.float32  # the head stays float32
    texts = [*TEXTS, "a much longer text that pads the others " * 9]  # padded rows
    got = _scores(bf16.model, bf16.tokenizer, texts)
    assert got.dtype == torch.float32 and got.shape == (len(texts), len(bf16.cfg.labels))
    torch.testing.assert_close(got, _scores(source, bf16.tokenizer, texts), atol=1e-3, rtol=0)
    want = _scores(fp32.model, fp32.tokenizer, texts)
    assert 0.0 < (got - want).abs().max().item() < 0.03  # bfloat16, within the gate's limit


class _Recorder(nn.Module):
    """Calls ``inner`` and notes ``name`` in ``calls``."""

    def __init__(self, inner: nn.Module, name: str, calls: list[str]) -> None:
        super().__init__()
        self.inner, self.name, self.calls = inner, name, calls

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        return self.inner(*args)


def test_large_batches_take_the_other_attention(bf16_repo: Path, monkeypatch) -> None:
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    calls: list[str] = []
    for name in ("small", "large"):
        monkeypatch.setattr(bf16.model, name, _Recorder(getattr(bf16.model, name), name, calls))
    monkeypatch.setattr(bf16_cpu, "SDPA_MIN_TOKENS", 40)
    enc = bf16.tokenizer(["short", "a longer text " * 20], padding=True, return_tensors="pt")
    assert enc["input_ids"].numel() >= 40
    with torch.inference_mode():
        large = bf16.model(enc["input_ids"], enc["attention_mask"])
        small = bf16.model(enc["input_ids"][:1, :5], enc["attention_mask"][:1, :5])
        want = bf16.moderation_model(enc["input_ids"], enc["attention_mask"])
    assert calls == ["large", "small"]
    torch.testing.assert_close(large, want, atol=0.02, rtol=0)  # sdpa vs eager, both bf16
    assert small.shape == (1, len(bf16.cfg.labels))


def test_without_fused_kernels_torch_linears_serve_traced(bf16_repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(bf16_cpu, "fused_kernels_available", lambda: False)
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    assert isinstance(bf16.model, bf16_cpu.TracedCore)
    encoder = bf16.moderation_model.encoder
    assert not any(isinstance(m, bf16_cpu.PackedLinear) for m in encoder.modules())
    fp32 = load_model(bf16_repo, "cpu", "float32")
    got = _scores(bf16.model, bf16.tokenizer, TEXTS)
    assert (got - _scores(fp32.model, fp32.tokenizer, TEXTS)).abs().max().item() < 0.03


def test_a_trace_that_disagrees_is_not_served(bf16_repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(bf16_cpu, "CHECK_TOLERANCE", -1.0)  # every check fails
    bf16 = load_model(bf16_repo, "cpu", "bfloat16")
    assert not isinstance(bf16.model, bf16_cpu.TracedCore)  # the eager model serves
    fp32 = load_model(bf16_repo, "cpu", "float32")
    got = _scores(bf16.model, bf16.tokenizer, TEXTS)
    assert (got - _scores(fp32.model, fp32.tokenizer, TEXTS)).abs().max().item() < 0.03


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
