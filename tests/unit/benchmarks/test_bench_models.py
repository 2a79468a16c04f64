"""Benchmarks measure int8 speed on any CPU: without VNNI the ONNX int8 graph they load has
7-bit weights (exact there), never the 8-bit one load_model refuses on such a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _models

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(("vnni", "bits"), [(True, 8), (False, 7)])
def test_ort_int8_loads_for_bench_on_every_cpu(tiny_repo: Path, monkeypatch, vnni, bits) -> None:
    monkeypatch.setattr(_models, "exact_u8s8_gemm", lambda: vnni)
    monkeypatch.setattr("serving.model.load.exact_u8s8_gemm", lambda: vnni)
    loaded = _models.load_for_bench(tiny_repo / "tiny", "cpu", "int8", backend="onnxruntime")
    assert (loaded.backend, loaded.dtype, loaded.cfg.onnx_int8_weight_bits) == (
        "onnxruntime", "int8", bits,
    )  # fmt: skip
