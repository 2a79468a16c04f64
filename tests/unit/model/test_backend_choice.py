"""The per-machine choice of backend x dtype: which candidates a model's gates allow, the
fastest measured one is served, and an explicit slower choice is served with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serving.config import Settings
from serving.model import backend_choice as bc
from serving.model.load import LoadedModel
from serving.model.repo_config import load_model_config, save_model_config

pytest.importorskip("onnxruntime")


@pytest.fixture
def gated_repo(tiny_repo: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny model with both int8 gates passed (8-bit ONNX weights) on a CPU with VNNI,
    restored after the test."""
    monkeypatch.setattr(bc, "exact_u8s8_gemm", lambda: True)
    monkeypatch.setattr("serving.model.load.exact_u8s8_gemm", lambda: True)
    cfg = load_model_config(tiny_repo / "tiny")
    cfg.int8_ok = cfg.onnx_int8_ok = True
    save_model_config(cfg, tiny_repo / "tiny")
    yield tiny_repo / "tiny"
    cfg.int8_ok = cfg.onnx_int8_ok = False
    save_model_config(cfg, tiny_repo / "tiny")


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **{"backend_probe_s": 1.0, **kw})  # type: ignore[call-arg]


def test_candidates_follow_the_gates(tiny_repo: Path, gated_repo: Path) -> None:
    auto = _settings()
    assert bc.candidates(gated_repo, auto) == [
        ("torch", "float32"),
        ("onnxruntime", "float32"),
        ("onnxruntime", "int8"),
    ]  # torch int8 needs minutes of compilation: by name only
    assert bc.candidates(gated_repo, _settings(dtype="int8")) == [
        ("torch", "int8"),
        ("onnxruntime", "int8"),
    ]
    assert bc.candidates(gated_repo, _settings(backend="torch")) == [("torch", "float32")]


def test_ungated_int8_is_not_a_candidate(tiny_repo: Path) -> None:
    assert ("onnxruntime", "int8") not in bc.candidates(tiny_repo / "tiny", _settings())
    with pytest.raises(ValueError, match="no int8 path that passed its accuracy gate"):
        bc.candidates(tiny_repo / "tiny", _settings(dtype="int8"))


def test_8bit_graph_is_skipped_without_vnni(gated_repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(bc, "exact_u8s8_gemm", lambda: False)  # an AVX2-only CPU
    assert ("onnxruntime", "int8") not in bc.candidates(gated_repo, _settings())
    cfg = load_model_config(gated_repo)
    cfg.onnx_int8_weight_bits = 7  # exact everywhere
    save_model_config(cfg, gated_repo)
    try:
        assert ("onnxruntime", "int8") in bc.candidates(gated_repo, _settings())
    finally:
        cfg.onnx_int8_weight_bits = 8
        save_model_config(cfg, gated_repo)


def _fake_rates(monkeypatch: pytest.MonkeyPatch, rates: dict[tuple[str, str], float]) -> None:
    def fake(loaded: LoadedModel, seconds: float) -> float:
        return rates[(loaded.backend, loaded.dtype)]

    monkeypatch.setattr(bc, "tokens_per_s", fake)


def test_auto_serves_the_fastest(gated_repo: Path, monkeypatch) -> None:
    _fake_rates(monkeypatch, {("torch", "float32"): 100.0, ("onnxruntime", "float32"): 120.0,
                              ("onnxruntime", "int8"): 250.0})  # fmt: skip
    loaded, choice = bc.choose_and_load(gated_repo, _settings(), "cpu")
    assert (loaded.backend, loaded.dtype) == ("onnxruntime", "int8")
    assert (choice.backend, choice.dtype) == ("onnxruntime", "int8")
    assert [(p.backend, p.dtype, p.tokens_per_s) for p in choice.probes] == [
        ("onnxruntime", "int8", 250.0),
        ("torch", "float32", 100.0),
        ("onnxruntime", "float32", 120.0),
    ]
    _fake_rates(monkeypatch, {("torch", "float32"): 300.0, ("onnxruntime", "float32"): 120.0,
                              ("onnxruntime", "int8"): 250.0})  # fmt: skip
    loaded, choice = bc.choose_and_load(gated_repo, _settings(), "cpu")
    assert (loaded.backend, loaded.dtype) == ("torch", "float32")


def test_explicit_slower_choice_warns_with_the_ratio(gated_repo: Path, monkeypatch, caplog) -> None:
    _fake_rates(monkeypatch, {("torch", "float32"): 200.0, ("onnxruntime", "int8"): 50.0})
    with caplog.at_level(logging.WARNING, logger=bc.__name__):
        loaded, choice = bc.choose_and_load(
            gated_repo, _settings(backend="onnxruntime", dtype="int8"), "cpu"
        )
    assert (loaded.backend, loaded.dtype) == ("onnxruntime", "int8")  # served as asked
    assert "0.25x" in choice.reason
    assert any("SLOWER THAN FLOAT32" in r.message and "0.25x" in r.message
               for r in caplog.records)  # fmt: skip


def test_no_probe_means_torch_float32(gated_repo: Path, monkeypatch) -> None:
    def never(*a: object) -> float:
        raise AssertionError("timed although MODSERVE_BACKEND_PROBE_S=0")

    monkeypatch.setattr(bc, "tokens_per_s", never)
    loaded, choice = bc.choose_and_load(gated_repo, _settings(backend_probe_s=0), "cpu")
    assert (loaded.backend, loaded.dtype, choice.probes[0].tokens_per_s) == (
        "torch", "float32", None,
    )  # fmt: skip


def test_real_timing_measures_tokens(tiny_repo: Path) -> None:
    from serving.model.load import load_model

    rate = bc.tokens_per_s(load_model(tiny_repo / "tiny", "cpu", "float32"), 0.05)
    assert rate > 0


def test_bf16_is_a_candidate_where_gated_and_native(gated_repo: Path, monkeypatch) -> None:
    cfg = load_model_config(gated_repo)
    monkeypatch.setattr(bc, "has_native_bf16", lambda: True)  # AVX512-BF16 / AMX-BF16
    assert ("torch", "bfloat16") not in bc.candidates(gated_repo, _settings())  # no bf16_ok
    cfg.bf16_ok = True
    save_model_config(cfg, gated_repo)
    try:
        assert bc.candidates(gated_repo, _settings()) == [
            ("torch", "float32"),
            ("torch", "bfloat16"),
            ("onnxruntime", "float32"),
            ("onnxruntime", "int8"),
        ]
        assert bc.candidates(gated_repo, _settings(dtype="bfloat16")) == [("torch", "bfloat16")]
        monkeypatch.setattr(bc, "has_native_bf16", lambda: False)  # emulated: slower than fp32
        assert ("torch", "bfloat16") not in bc.candidates(gated_repo, _settings())
        with pytest.raises(ValueError, match="AVX512-BF16"):
            bc.candidates(gated_repo, _settings(dtype="bfloat16"))
        # named in full (backend and dtype), it serves: load_model warns it is emulated
        assert bc.candidates(gated_repo, _settings(backend="torch", dtype="bfloat16")) == [
            ("torch", "bfloat16")
        ]
    finally:
        cfg.bf16_ok = False
        save_model_config(cfg, gated_repo)
