"""The ONNX Runtime backend: same scores as torch in float32, the int8 rewrite computes exactly
the quantised arithmetic its doc states, and the graph cache is keyed by what it is made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from serving.model import onnx_export
from serving.model.load import load_model
from serving.model.onnx_runtime import OnnxRuntimeModel
from serving.model.repo_config import load_model_config, save_model_config

pytest.importorskip("onnxruntime")


def _batch(n: int = 4, t: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 20000, (n, t), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # padded rows must score as torch scores them
    mask[3, 3:] = 0
    return ids, mask


def test_float32_graph_scores_as_torch(tiny_repo: Path, tmp_path: Path) -> None:
    torch_model = load_model(tiny_repo / "tiny", "cpu", "float32").model
    ort = load_model(tiny_repo / "tiny", "cpu", "float32", backend="onnxruntime",
                     onnx_cache_dir=tmp_path)  # fmt: skip
    assert ort.backend == "onnxruntime" and isinstance(ort.model, OnnxRuntimeModel)
    ids, mask = _batch()
    with torch.inference_mode():
        want = torch_model(ids, mask).numpy()
    got = ort.model(ids, mask).numpy()
    assert got.shape == want.shape == (4, len(ort.cfg.labels))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_the_graph_has_eager_attention_and_torch_keeps_its_own(
    tiny_repo: Path, tmp_path: Path
) -> None:
    import onnx

    model = load_model(tiny_repo / "tiny", "cpu", "float32").model
    served = model.encoder.config._attn_implementation
    onnx_export.export_float(model, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops, sorted(ops)  # no SDPA NaN guard
    assert model.encoder.config._attn_implementation == served


class _Toy(nn.Module):
    """Two Linears the rewrite must find by their weights: one on the input, one on a GELU
    output (the FFN output projection's situation), named as in HF BERT."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Module()])  # type: ignore[assignment]
        blk = self.encoder.layer[0]
        blk.query = nn.Linear(16, 8)
        blk.output = nn.Module()
        blk.output.dense = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = (
            input_ids.float().unsqueeze(-1)
            * torch.linspace(-0.5, 1.5, 16)
            * attention_mask[..., None]
        )
        blk = self.encoder.layer[0]
        return blk.output.dense(nn.functional.gelu(blk.query(x)))


def _reference_int8(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The module doc's arithmetic, in numpy (no smoothing): per-token range on 255 levels
    centred on a level-aligned midpoint, int8 weights per output channel. The toy's inputs
    are not symmetric around 0, so the centring is exercised."""
    wt = w.T
    w_scale = np.maximum(np.abs(wt).max(axis=0), 1e-8) / 127.0
    wq = np.clip(np.round(wt / w_scale), -127, 127)
    hi, lo = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    scale = np.maximum((hi - lo) / 255.0, 1e-8)
    mid = np.rint((hi + lo) / 2 / scale) * scale
    q = np.clip(np.rint((x - mid) / scale) + 128, 0, 255) - 128
    return (q @ wq) * w_scale * scale + mid * (wq * w_scale).sum(axis=0) + b


def test_int8_rewrite_is_the_documented_arithmetic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    toy = _Toy().eval()
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx_export.export_float(toy, src)
    done = onnx_export.rewrite_int8(src, dst, toy.encoder, None)
    assert sorted(done) == ["layer.0.output.dense", "layer.0.query"]
    ids = torch.randint(1, 50, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    got = OnnxRuntimeModel(dst, 1)(ids, mask).numpy()
    blk = toy.encoder.layer[0]
    x = (ids.float().unsqueeze(-1) * torch.linspace(-0.5, 1.5, 16)).numpy()
    q = blk.query
    h = _reference_int8(x, q.weight.detach().numpy(), q.bias.detach().numpy())
    h = nn.functional.gelu(torch.from_numpy(h)).numpy()
    d = blk.output.dense
    want = _reference_int8(h, d.weight.detach().numpy(), d.bias.detach().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        exact = toy(ids, mask).numpy()
    assert np.abs(got - exact).max() > 0  # it did quantise
    assert np.abs(got - exact).max() < 0.05 * np.abs(exact).max()


def _int8_weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.name.endswith("/wq")]  # fmt: skip


def _max_int8_weight(path: Path) -> int:
    return max(int(np.abs(w).max()) for w in _int8_weights(path))


def test_7bit_weights_stay_within_63(tmp_path: Path) -> None:
    toy = _Toy().eval()
    src, dst = tmp_path / "f.onnx", tmp_path / "q7.onnx"
    onnx_export.export_float(toy, src)
    onnx_export.rewrite_int8(src, dst, toy.encoder, None, weight_bits=7)
    wq = _int8_weights(dst)
    assert len(wq) == 2 and all(np.abs(w).max() == 63 for w in wq)


def test_keep_float_layers_stay_matmul(tmp_path: Path) -> None:
    toy = _Toy().eval()
    src = tmp_path / "f.onnx"
    onnx_export.export_float(toy, src)
    done = onnx_export.rewrite_int8(src, tmp_path / "q.onnx", toy.encoder, None,
                                    keep_float=["layer.0.query"])  # fmt: skip
    assert done == ["layer.0.output.dense"]


def test_graph_cache_is_keyed_by_what_it_is_made_of(tiny_repo: Path, tmp_path: Path) -> None:
    lm = load_model(tiny_repo / "tiny", "cpu", "float32", head_kernel="torch")
    vdir = lm.cfg.version_dir(tiny_repo / "tiny")
    builds: list[int] = []

    def build() -> torch.nn.Module:
        builds.append(1)
        return lm.model

    first = onnx_export.cached_onnx(build, vdir, "int8", None, [], tmp_path)
    stamp = first.stat().st_mtime_ns
    again = onnx_export.cached_onnx(build, vdir, "int8", None, [], tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert len(builds) == 1  # a cache hit never builds the torch model
    other = onnx_export.cached_onnx(build, vdir, "int8", None, ["encoder.layer.0.output.dense"],
                                    tmp_path)  # fmt: skip
    fp32 = onnx_export.cached_onnx(build, vdir, "float32", None, [], tmp_path)
    assert len({first.parent, other.parent, fp32.parent}) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        {first.parent.name, other.parent.name, fp32.parent.name}
    )  # no temporary directories left behind


def test_int8_needs_the_onnx_gate(tiny_repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("serving.model.load.exact_u8s8_gemm", lambda: True)  # a VNNI CPU
    model_dir = tiny_repo / "tiny"
    with pytest.raises(ValueError, match="onnx_int8_ok: false"):
        load_model(model_dir, "cpu", "int8", backend="onnxruntime", onnx_cache_dir=tmp_path)
    cfg = load_model_config(model_dir)
    cfg.onnx_int8_ok = True
    save_model_config(cfg, model_dir)
    try:
        lm = load_model(model_dir, "cpu", "int8", backend="onnxruntime", onnx_cache_dir=tmp_path)
        ids, mask = _batch()
        assert lm.model(ids, mask).shape == (4, len(cfg.labels))
        monkeypatch.setattr("serving.model.load.exact_u8s8_gemm", lambda: False)  # AVX2
        with pytest.raises(ValueError, match="saturate"):
            load_model(model_dir, "cpu", "int8", backend="onnxruntime", onnx_cache_dir=tmp_path)
        cfg.onnx_int8_weight_bits = 7
        save_model_config(cfg, model_dir)
        lm = load_model(model_dir, "cpu", "int8", backend="onnxruntime", onnx_cache_dir=tmp_path)
        assert lm.model(ids, mask).shape == (4, len(cfg.labels))
        assert _max_int8_weight(lm.model.path) == 63  # the 7-bit graph the gate passed
    finally:
        cfg.onnx_int8_ok, cfg.onnx_int8_weight_bits = False, 8
        save_model_config(cfg, model_dir)
