"""The ONNX Runtime backend: the model core as an ORT session behind the torch module contract.

Every backend is an ``nn.Module`` with the same contract, so the engine, the evaluation and
the benchmarks run any of them unchanged: ``forward((B, T) int64 ids, (B, T) int64 mask)``
-> ``(B, L)`` float32 scores in [0, 1]. :class:`OnnxRuntimeModel` keeps the torch model's
float32 weights nowhere: the session holds its own (float32 or int8) copy.

Threads: ``intra_op_num_threads`` = torch's threads per core worker (set by
``serving.model.cpu_layout`` before loading), so the two backends share the cores the same
way; several core workers call one session concurrently (``run`` is thread-safe and
releases the GIL). Spinning is off: the cores are shared with the event loop and the
tokenizer, and a spinning ORT thread would take CPU from them while waiting for work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.model.cpu_isa import has_vnni, is_x86


def exact_u8s8_gemm() -> bool:
    """Whether ONNX Runtime's uint8 x int8 GEMM is exact with 8-bit weights on this CPU:
    x86 needs VNNI (``avx512_vnni`` or ``avx_vnni``), else VPMADDUBSW saturates
    (``serving.model.onnx_export.SATURATION``); other architectures have no such step."""
    return has_vnni() if is_x86() else True


def available() -> bool:
    """Whether ``onnxruntime`` (and ``onnx``, to build graphs) can be imported here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntimeModel(nn.Module):
    """An ONNX graph (``serving.model.onnx_export``) run by ONNX Runtime on the CPU."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: ORT warns about every folded initializer
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids.cpu().numpy(), dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask.cpu().numpy(), dtype=np.int64),
        }
        (scores,) = self.session.run(["scores"], feeds)
        return torch.from_numpy(scores)

    def extra_repr(self) -> str:
        return f"path={self.path}"
