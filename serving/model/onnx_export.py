"""The ONNX form of a modserve model: export (float32) and the int8 rewrite, cached on disk.

What ``MODSERVE_BACKEND=onnxruntime`` runs (``serving.model.onnx_runtime``). The graph
is the whole model core: ``input_ids``, ``attention_mask`` (int64, B x T) -> ``scores``
(float32, B x L): encoder, the torch reference head (pooling + linear + activation), exported
once with ``torch.onnx.export`` (dynamic batch and length). ONNX Runtime's own graph
optimisations (level ``ORT_ENABLE_ALL``: LayerNorm/GELU/MatMul fusions) run when a session
is made; the transformers ``optimize_model`` attention fusion was measured slower on CPU
(7,165 vs 7,729 tok/s at 32 x 64) and is not used.

int8 (:func:`rewrite_int8`): every encoder Linear ``x @ W^T`` becomes, in ONNX operators,

    xs = x / s                                  (SmoothQuant factors, as torch int8 uses)
    scale = (max - min) / 255 per token         (ReduceMax / ReduceMin over features)
    mid = round((max + min) / 2 / scale) * scale
    q = QuantizeLinear(xs - mid, scale, 128)    (uint8 0..255 = -128..127 levels, per token)
    y = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * scale + mid * sum_k(Wq * w_scale)

``Wq`` int8 with one scale per output channel (weights x s). This is the arithmetic of the
torch int8 path (``serving.model.quantize.Int8Linear``: an asymmetric per-token range, an
exact level for 0) in the form ONNX Runtime's integer GEMM takes: ``MatMulIntegerToFloat``
allows one activation zero point per tensor, so each token is centred on its (level-aligned)
midpoint and 128 makes the centred int8 values unsigned; the midpoint comes back through
the *quantised* weights' column sums, so both parts share one weight error (with the float
weights' sums, the FFN output projections moved 17x more). uint8 x int8 is the native x86
integer dot product (VPMADDUBSW on AVX2, VPDPBUSD with AVX-512 VNNI), so ONNX Runtime runs
it on any x86 CPU, unlike ``torch._int_mm``, which falls back to a scalar loop without VNNI.
One scale per token, not ORT's ``quantize_dynamic`` (one per tensor): [CLS]/[SEP] carry
activations far larger than other tokens, and per-tensor scales moved the default model's
scores by up to 0.40 (0.22 smoothed with 4 layers float). Per-layer relative output error
on real activations equals torch int8's (e.g. FFN output 5.6e-4, query 1.6e-4).

Saturation (``SATURATION``): without VNNI, x86 CPUs multiply uint8 x int8 with VPMADDUBSW,
which adds each pair of products into int16 and saturates: 2 x 255 x 127 > 32,767. With
VNNI (AVX512-VNNI or AVX-VNNI) the products go straight to int32 and nothing saturates. So a
graph with 8-bit weights is exact only on VNNI CPUs; with 7-bit weights (|w| <= 63: 2 x 255
x 63 = 32,130) it is exact everywhere. The export gates both and records which one passed
(``onnx_int8_weight_bits``); the backend choice skips an 8-bit graph on a CPU without VNNI.

Measured and not adopted (2026-12-02, 2-core AMD EPYC with AVX-512 VNNI, ORT 1.32, 2 threads,
idle machine, the default model at 32 x 64 tokens; ratios against the torch fp32 forward):

* The per-token quantisation nodes cost as much as the integer GEMM: one 384 -> 1,536 Linear
  over 2,048 tokens takes 11.7 ms in float, 7.1 ms as this subgraph and 3.4 ms as a bare
  ``MatMulIntegerToFloat`` on uint8 input. Every Linear in int8 (none kept float) runs the
  core 2.2-2.5x; a symmetric per-token scale (ReduceMax of Abs, no midpoint) 2.8-3.0x; the
  gated plan (4 FFN outputs float) 1.9-2.1x. Neither passes the gate: all-int8 in this
  form agrees with float32 on 99.29 % of validation rows' flags (< 99.5 %), and the
  symmetric form moves scores more (p99.9 0.076 against 0.049 on 540 corpus texts).
* The error is the activations' rounding, not the weights': in a fake-quant model, GPTQ
  weight rounding halves the weights-only error and leaves the total unchanged; keeping the
  top 4-16 input channels float, or 2-4 per-token groups on the FFN output, do not help.
* ``MatMulNBits`` (8-bit weights, ``accuracy_level`` 4: blockwise int8 activations inside the
  kernel) runs a single Linear only 1.2-1.6x float.

Files: ``model.onnx`` / ``model.int8.onnx`` in a cache directory keyed by a hash of what
they are made from (weights, smoothing factors, float layers, exporter versions), so a new
model version or a new plan never reuses a stale graph; see :func:`cached_onnx`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

OPSET = 17  # ReduceMin/ReduceMax take ``axes`` as an attribute up to opset 17
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "scores"
FORMAT_VERSION = 6  # bump when the graph this module writes changes
# The encoder's attention as exported: "eager" (matmul, mask add, softmax, matmul) gives ORT
# a graph 4 % faster than torch's SDPA export (whose NaN guard adds IsNaN + Where on every
# score), with the same scores to 5e-7 (2-core AMD EPYC, 1 thread, 32 x 64 tokens).
EXPORT_ATTENTION = "eager"
SATURATION = "uint8 x int8 pairs saturate int16 (VPMADDUBSW) on x86 without VNNI"


def export_float(model: nn.Module, path: Path, output: str = OUTPUT) -> None:
    """``model`` ((B, T) ids, mask -> (B, L) float32; modserve's: scores) as an ONNX file at
    ``path``, its output named ``output``, dynamic batch and length."""
    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones_like(ids)
    encoder = getattr(model, "encoder", None)
    config = getattr(encoder, "config", None)
    served_attention = getattr(config, "_attn_implementation", None)
    if served_attention is not None and isinstance(encoder, PreTrainedModel):
        encoder.set_attn_implementation(EXPORT_ATTENTION)
    try:
        _export(model, ids, mask, path, output)
    finally:  # the torch model keeps serving with its own attention
        if served_attention is not None and isinstance(encoder, PreTrainedModel):
            encoder.set_attn_implementation(served_attention)


def _export(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, path: Path, output: str
) -> None:
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about Python conditions it fixes (mask padding, causal flag); both
        # are constant for an encoder with an attention mask, at every length.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            input_names=list(INPUTS),
            output_names=[output],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                output: {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _linear_names_by_weight(encoder: nn.Module) -> dict[bytes, tuple[str, nn.Linear]]:
    """Each encoder Linear, keyed by the bytes of ``W^T`` as the exporter stores it."""
    out = {}
    for name, mod in encoder.named_modules():
        if isinstance(mod, nn.Linear):
            wt = mod.weight.detach().float().t().contiguous().numpy()
            out[wt.tobytes()] = (name, mod)
    return out


def rewrite_int8(
    src: Path,
    dst: Path,
    encoder: nn.Module,
    smoothing: dict[str, torch.Tensor] | None,
    keep_float: Collection[str] = (),
    weight_bits: int = 8,
) -> list[str]:
    """Write ``dst``: the float graph ``src`` with every encoder Linear's MatMul as the int8
    subgraph of the module doc, except ``keep_float`` (qualified names). Returns the names
    rewritten. Linears are found by their weights (node names depend on the exporter).

    ``weight_bits`` 7 keeps weights in [-63, 63] (see ``SATURATION``): exact on every x86
    CPU, at twice the weight rounding error."""
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, not {weight_bits}")
    levels = 2 ** (weight_bits - 1) - 1  # 127 or 63
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(src))
    g = graph_model.graph
    inits = {i.name: i for i in g.initializer}
    linears = _linear_names_by_weight(encoder)
    smoothing = smoothing or {}
    shared: dict[str, np.ndarray] = {
        "int8/c255": np.array(255.0, np.float32),
        "int8/eps": np.array(1e-8, np.float32),
        "int8/one": np.array(1.0, np.float32),
        "int8/half": np.array(0.5, np.float32),
        "int8/zp128": np.array(128, np.uint8),
        "int8/flat": np.array([-1], np.int64),
        "int8/col": np.array([-1, 1], np.int64),
        "int8/i0": np.array([0], np.int64),
        "int8/i_1": np.array([-1], np.int64),
        "int8/imax": np.array([2**62], np.int64),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in shared.items())
    new_nodes: list[onnx.NodeProto] = []
    done: list[str] = []
    for node in g.node:
        w_init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        found = None
        if w_init is not None:
            wt = numpy_helper.to_array(w_init).astype(np.float32)  # (in, out) = W^T
            found = linears.get(np.ascontiguousarray(wt).tobytes())
        if found is None or found[0] in keep_float:
            new_nodes.append(node)
            continue
        name = found[0]
        p = f"int8/{name}/"
        s = smoothing.get(name)
        inv_s = np.ones(wt.shape[0], np.float32) if s is None else 1.0 / s.float().numpy()
        w = wt / inv_s[:, None]
        w_scale = (np.maximum(np.abs(w).max(axis=0), 1e-8) / levels).astype(np.float32)
        consts = {
            "inv_s": inv_s.astype(np.float32),
            "wq": np.clip(np.round(w / w_scale), -levels, levels).astype(np.int8),
            "w_scale": w_scale,
        }
        # mid x sum_k of the weights as quantised, not as trained: the two parts of
        # (x - mid) @ Wq + mid @ Wq then share one weight error. With float weights here, a
        # large mid times the summed rounding of 1,536 weights moved FFN outputs 17x more.
        deq = consts["wq"].astype(np.float32) * w_scale
        consts["col_sum"] = deq.sum(axis=0).astype(np.float32)
        g.initializer.extend(numpy_helper.from_array(v, p + k) for k, v in consts.items())
        new_nodes.extend(_int8_nodes(p, node.input[0], node.output[0]))
        done.append(name)
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(graph_model, str(dst))
    return done


def _int8_nodes(p: str, x: str, out: str) -> list[Any]:
    """The nodes computing ``out`` (a Linear's MatMul output) from ``x`` in int8, using the
    initializers named ``p + {inv_s, wq, w_scale, col_sum}`` and ``int8/*``."""
    from onnx import helper

    nodes: list[Any] = []

    def op(kind: str, ins: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, ins, [p + name], name=p + name, **attrs))
        return p + name

    x = op("Mul", [x, p + "inv_s"], "xs")
    hi = op("ReduceMax", [x], "hi", axes=[-1], keepdims=1)
    lo = op("ReduceMin", [x], "lo", axes=[-1], keepdims=1)
    scale = op("Max", [op("Div", [op("Sub", [hi, lo], "span"), "int8/c255"], "scale0"),
                       "int8/eps"], "scale")  # fmt: skip
    mid = op("Mul", [op("Add", [hi, lo], "hi_lo"), "int8/half"], "mid0")
    mid = op("Mul", [op("Round", [op("Div", [mid, scale], "mid_steps")], "mid_k"), scale], "mid")
    x = op("Sub", [x, mid], "xs_centred")  # in [-128, 128] x scale (+128: one level clipped)
    per_row = op("Reshape", [scale, "int8/flat"], "scale_rows")  # (rows,)
    shape = op("Shape", [x], "shape")
    features = op("Slice", [shape, "int8/i_1", "int8/imax"], "features")
    rows_shape = op("Concat", ["int8/flat", features], "rows_shape", axis=0)
    rows = op("Reshape", [x, rows_shape], "rows")  # (rows, in)
    zeros = op("Expand", ["int8/zp128", op("Shape", [per_row], "n_rows")], "zero_points")
    q = op("QuantizeLinear", [rows, per_row, zeros], "q", axis=0)
    ins = [q, p + "wq", "int8/one", p + "w_scale", "int8/zp128"]
    y = op("MatMulIntegerToFloat", ins, "y_rows", domain="com.microsoft")
    y = op("Mul", [y, op("Reshape", [scale, "int8/col"], "scale_col")], "y_scaled")
    mid_w = op("Mul", [op("Reshape", [mid, "int8/col"], "mid_col"), p + "col_sum"], "mid_w")
    y = op("Add", [y, mid_w], "y_uncentred")  # + mid x sum_k (W * s), per token
    lead = op("Slice", [shape, "int8/i0", "int8/i_1"], "lead")
    out_shape = op("Concat", [lead, op("Shape", [y], "out_features", start=1)], "out_shape", axis=0)
    nodes.append(helper.make_node("Reshape", [y, out_shape], [out], name=p + "y"))
    return nodes


def _fingerprint(
    vdir: Path, precision: str, keep_float: Collection[str], weight_bits: int = 8
) -> str:
    """Hash of what a cached graph is made from: weights (and smoothing for int8), plan,
    and the versions of the code that write it."""
    import onnx

    from serving.model.load import WEIGHTS_FILE
    from serving.model.quantize import SMOOTHING_FILE

    h = hashlib.sha256()
    files = [WEIGHTS_FILE] + ([SMOOTHING_FILE] if precision == "int8" else [])
    for f in files:
        p = vdir / f
        if p.is_file():
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    meta = {
        "precision": precision,
        "keep_float": sorted(keep_float) if precision == "int8" else [],
        "weight_bits": weight_bits if precision == "int8" else 0,
        "format": FORMAT_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``MODSERVE_ONNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/modserve/onnx`` (~/.cache)."""
    from serving.config import Settings

    configured = Settings().onnx_cache_dir
    if configured is not None:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modserve" / "onnx"


def cached_onnx(
    build_model: Callable[[], nn.Module],
    vdir: Path,
    precision: str,
    smoothing: dict[str, torch.Tensor] | None,
    keep_float: Collection[str],
    cache_dir: Path | None = None,
    weight_bits: int = 8,
) -> Path:
    """The ONNX file of the model in version dir ``vdir`` in ``precision`` (float32 | int8,
    ``weight_bits`` for int8): from the cache if its fingerprint matches, else exported now
    from ``build_model()`` (the float32 torch model; called only on a miss, so a cached start
    never builds it) and written atomically. A cache that cannot be written falls back to a
    temporary directory (the graph is made again next process)."""
    name = f"model.{precision}.onnx"
    key = _fingerprint(vdir, precision, keep_float, weight_bits)
    root = cache_dir or default_cache_dir()
    target = root / key / name
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=target.parent))
    except OSError as e:
        log.warning("ONNX cache %s is not writable (%s): using a temporary directory", root, e)
        work = Path(tempfile.mkdtemp(prefix="modserve-onnx-"))
        target = work / name
    float_path = work / "float.onnx"
    model = build_model()
    export_float(model, float_path)
    if precision == "int8":
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise TypeError("int8 ONNX needs a modserve model (an encoder and a head)")
        rewrite_int8(float_path, work / name, encoder, smoothing, keep_float, weight_bits)
        float_path.unlink()
    else:
        float_path.rename(work / name)
    (work / name).replace(target)
    if work != target.parent:
        shutil.rmtree(work, ignore_errors=True)
    log.info("ONNX %s graph of %s written to %s", precision, vdir, target)
    return target
