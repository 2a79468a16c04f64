"""CPU int8 (serving/model/quantize.py): what the int8 encoder computes, compiled and eager."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertModel

from serving.config import Settings
from serving.model import quantize
from serving.model.quantize import (
    SMOOTHING_FILE,
    Int8Linear,
    int8_sensitivity,
    load_smoothing,
    quantize_encoder_int8,
    save_smoothing,
    smoothing_factors,
)
from tests.helpers import tiny_bert


def _encoder(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=500, hidden_size=64, intermediate_size=128, max_position_embeddings=64)
    return tiny_bert(**sizes).eval()


def _inputs(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(5, 500, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded row
    return ids, mask


def _hidden(enc: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return enc(input_ids=ids, attention_mask=mask).last_hidden_state


def test_sensitivity_ranks_every_linear_and_keeping_the_worst_float_helps() -> None:
    """The export keeps the Linears with the largest int8 error in float32 when int8 fails
    its gate: the ranking covers every Linear, and keeping its head float brings the
    encoder's output closer to fp32 than quantising everything."""
    ref = _encoder()
    with torch.no_grad():  # one layer with an outlier input channel: int8's worst
        ref.encoder.layer[1].output.dense.weight[:, 3] *= 40.0
    ids, mask = _inputs(4, 20)
    ranked = int8_sensitivity(ref, lambda: _hidden(ref, ids, mask))
    names = [n for n, _ in ranked]
    assert sorted(names) == sorted(n for n, m in ref.named_modules() if isinstance(m, nn.Linear))
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True) and errors[-1] >= 0
    assert names[0] == "encoder.layer.1.output.dense"
    full = quantize_encoder_int8(copy.deepcopy(ref), compile_model=False)
    mixed = quantize_encoder_int8(copy.deepcopy(ref), compile_model=False, keep_float=names[:1])
    assert isinstance(mixed.encoder.layer[1].output.dense, nn.Linear)
    assert sum(isinstance(m, Int8Linear) for m in mixed.modules()) == len(names) - 1
    a = _hidden(ref, ids, mask)
    assert (_hidden(mixed, ids, mask) - a).norm() < (_hidden(full, ids, mask) - a).norm()


def test_every_linear_is_int8_and_close_to_fp32() -> None:
    ref = _encoder()
    q = quantize_encoder_int8(copy.deepcopy(ref), compile_model=False)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 6  # q, k, v, attn-out, ffn-in, ffn-out per layer
    for lin in layers:  # int8 weights, one scale per output channel
        assert lin.weight_t.dtype == torch.int8
        assert lin.weight_scale.shape == (lin.out_features,)
    ids, mask = _inputs(3, 17)
    a, b = _hidden(ref, ids, mask), _hidden(q, ids, mask)
    assert not torch.equal(a, b)  # really quantized
    # W8A8 on a random 2-layer encoder: hidden states stay within a few % of fp32
    rel = (a - b).norm() / a.norm()
    assert rel < 0.05, float(rel)


def test_int8_linear_matches_hand_computed_asymmetric_quantisation() -> None:
    """One token, hand-checkable: weights per row, activations asymmetric over [lo, hi]."""
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.1, 0.2, 0.3, -0.4]]))
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[-0.17, 0.0, 2.0, 0.55]])  # a GELU-like input: small negative floor
    qlin = Int8Linear(lin)
    # activations: 255 levels over [-0.17, 2.0]; exact for values on the grid
    scale = 2.17 / 255
    zero = round(-128 + 0.17 / scale)
    xq = [(min(127, max(-128, round(v / scale + zero))) - zero) * scale for v in x[0].tolist()]
    wq = [
        [round(w / (max(abs(r) for r in row) / 127)) * max(abs(r) for r in row) / 127 for w in row]
        for row in lin.weight.tolist()
    ]
    expected = [
        sum(a * b for a, b in zip(xq, row, strict=True)) + bias
        for row, bias in zip(wq, [0.5, -1.0], strict=True)
    ]
    with torch.inference_mode():
        got = qlin(x)
    torch.testing.assert_close(got, torch.tensor([expected]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, lin(x).detach(), atol=0.02, rtol=0.0)


def test_smoothing_keeps_the_function_and_shrinks_error_on_outlier_channels() -> None:
    """x / s @ (W * s)^T == x @ W^T; with an outlier input channel, smoothing cuts the error."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 3] *= 60.0  # one outlier channel, as BERT hidden states have
    factors = smoothing_factors(nn.Sequential(lin), lambda: lin(x))
    assert set(factors) == {"0"} and factors["0"].shape == (64,)
    assert factors["0"][3] == factors["0"].max()  # the outlier channel gets the largest factor
    with torch.inference_mode():
        ref = lin(x)
        plain = Int8Linear(lin)(x)
        smooth = Int8Linear(lin, factors["0"])(x)
    err_plain, err_smooth = (plain - ref).abs().mean(), (smooth - ref).abs().mean()
    assert err_smooth < 0.7 * err_plain, (float(err_smooth), float(err_plain))


def test_smoothing_file_round_trip(tmp_path: Path) -> None:
    enc = _encoder(3)
    ids, mask = _inputs(4, 20)
    factors = smoothing_factors(enc, lambda: enc(input_ids=ids, attention_mask=mask))
    assert len(factors) == 12
    save_smoothing(factors, tmp_path)
    loaded = load_smoothing(tmp_path)
    assert loaded is not None and loaded.keys() == factors.keys()
    a = quantize_encoder_int8(copy.deepcopy(enc), factors, compile_model=False)
    b = quantize_encoder_int8(copy.deepcopy(enc), loaded, compile_model=False)
    assert all(m.inv_smoothing is not None for m in b.modules() if isinstance(m, Int8Linear))
    torch.testing.assert_close(_hidden(a, ids, mask), _hidden(b, ids, mask))


def test_missing_smoothing_file_warns_and_runs_unsmoothed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.model.quantize"):
        assert load_smoothing(tmp_path) is None
    assert SMOOTHING_FILE in caplog.text


def test_compiled_matches_eager_across_shapes() -> None:
    eager = quantize_encoder_int8(copy.deepcopy(_encoder(1)), compile_model=False)
    compiled = quantize_encoder_int8(copy.deepcopy(_encoder(1)), compile_model=True)
    assert compiled.forward is not eager.forward
    for batch, length in [(1, 16), (2, 16), (5, 33), (3, 64)]:  # batch 1 + dynamic shapes
        ids, mask = _inputs(batch, length)
        torch.testing.assert_close(
            _hidden(compiled, ids, mask), _hidden(eager, ids, mask), atol=2e-3, rtol=2e-3
        )


def test_compile_failure_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_compile(fn, **_kw):  # type: ignore[no-untyped-def]
        def run(*_a, **_k):  # type: ignore[no-untyped-def]
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(quantize.torch, "compile", broken_compile)
    expected = quantize_encoder_int8(copy.deepcopy(_encoder(2)), compile_model=False)
    enc = quantize_encoder_int8(copy.deepcopy(_encoder(2)), compile_model=True)
    ids, mask = _inputs(2, 16)
    with caplog.at_level(logging.WARNING, logger="serving.model.quantize"):
        out = _hidden(enc, ids, mask)
    assert "no C++ compiler found" in caplog.text
    torch.testing.assert_close(out, _hidden(expected, ids, mask))
    caplog.clear()
    _hidden(enc, ids, mask)  # eager from now on: no second warning
    assert caplog.text == ""


def test_compile_knob_is_read_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile_model=None`` follows MODSERVE_INT8_COMPILE, parsed once, by Settings."""
    compiled: list[bool] = []
    monkeypatch.setattr(quantize, "_compile_forward", lambda enc: compiled.append(True))
    for value, on in [("0", False), ("off", False), ("1", True), ("", True)]:
        monkeypatch.setenv("MODSERVE_INT8_COMPILE", value)
        assert Settings().int8_compile is on
        compiled.clear()
        quantize_encoder_int8(copy.deepcopy(_encoder(1)), compile_model=None)
        assert compiled == ([True] if on else [])


def test_compiled_kernels_let_other_python_threads_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop and a second core thread must not stall while an int8 kernel runs:
    inductor's Python binding of each C++ kernel it compiles drops the GIL around the kernel
    call. Checked on the source inductor really compiles (deterministic); how much Python
    runs beside a kernel is a timing: ``python -m benchmarks.gil_release``."""
    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import CppPythonBindingsCodeCache as bindings

    assert quantize.release_gil_in_inductor_kernels()
    compiled_sources: list[str] = []
    load_async = bindings.load_async.__func__  # type: ignore[attr-defined]

    def spy(cls, main_code: str, *args, **kwargs):
        compiled_sources.append(main_code)
        return load_async(cls, main_code, *args, **kwargs)

    monkeypatch.setattr(bindings, "load_async", classmethod(spy))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # compile, do not reload
    torch._dynamo.reset()

    @torch.compile(dynamic=True)
    def kernel(x: torch.Tensor) -> torch.Tensor:  # one fused C++ loop
        return torch.sin(x) * 1.0001 + torch.cos(x)

    x = torch.rand(1000)
    torch.testing.assert_close(kernel(x), torch.sin(x) * 1.0001 + torch.cos(x))
    bound = [src for src in compiled_sources if "kernel(" in src and "PyInit" in src]
    assert bound, "inductor compiled no Python-bound C++ kernel"
    assert all("PyEval_SaveThread()" in src and "PyEval_RestoreThread" in src for src in bound)
