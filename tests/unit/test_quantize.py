"""CPU int8 (serving/quantize.py): what the int8 encoder computes, compiled and eager."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from serving import quantize
from serving.quantize import quantize_encoder_int8


def _encoder(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


def _inputs(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(5, 500, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded row
    return ids, mask


def _hidden(enc: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return enc(input_ids=ids, attention_mask=mask).last_hidden_state


def test_every_linear_is_int8_and_close_to_fp32() -> None:
    ref = _encoder()
    q = quantize_encoder_int8(copy.deepcopy(ref), compile_model=False)
    weights = [m.weight for m in q.modules() if isinstance(m, nn.Linear)]
    assert len(weights) == 2 * 6  # q, k, v, attn-out, ffn-in, ffn-out per layer
    for w in weights:  # torchao Int8Tensor: int8 data + one scale per output channel
        assert w.qdata.dtype == torch.int8
        assert w.scale.numel() == w.shape[0]
    ids, mask = _inputs(3, 17)
    a, b = _hidden(ref, ids, mask), _hidden(q, ids, mask)
    assert not torch.equal(a, b)  # really quantized
    # W8A8 on a random 2-layer encoder: hidden states stay within a few % of fp32
    rel = (a - b).norm() / a.norm()
    assert rel < 0.05, float(rel)


def test_compiled_matches_eager_across_shapes() -> None:
    eager = quantize_encoder_int8(copy.deepcopy(_encoder(1)), compile_model=False)
    compiled = quantize_encoder_int8(copy.deepcopy(_encoder(1)), compile_model=True)
    assert compiled.forward is not eager.forward
    for batch, length in [(1, 16), (2, 16), (5, 33), (3, 64)]:  # batch 1 + dynamic shapes
        ids, mask = _inputs(batch, length)
        torch.testing.assert_close(_hidden(compiled, ids, mask), _hidden(eager, ids, mask),
                                   atol=2e-3, rtol=2e-3)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken_compile(fn, **_kw):  # type: ignore[no-untyped-def]
        def run(*_a, **_k):  # type: ignore[no-untyped-def]
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(quantize.torch, "compile", broken_compile)
    expected = quantize_encoder_int8(copy.deepcopy(_encoder(2)), compile_model=False)
    enc = quantize_encoder_int8(copy.deepcopy(_encoder(2)), compile_model=True)
    ids, mask = _inputs(2, 16)
    with caplog.at_level(logging.WARNING, logger="serving.quantize"):
        out = _hidden(enc, ids, mask)
    assert "no C++ compiler found" in caplog.text
    torch.testing.assert_close(out, _hidden(expected, ids, mask))
    caplog.clear()
    _hidden(enc, ids, mask)  # eager from now on: no second warning
    assert caplog.text == ""


def test_compile_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, on in [("0", False), ("off", False), ("1", True), ("", True)]:
        monkeypatch.setenv(quantize.COMPILE_ENV, value)
        assert quantize.compile_enabled() is on
