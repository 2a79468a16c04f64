"""bfloat16 on CPU: the encoder in bfloat16, its Linears as oneDNN GEMMs with fused epilogues.

What ``MODSERVE_DTYPE=bfloat16`` serves on CPU, and what ``MODSERVE_DTYPE=auto`` times
against the other gated paths on CPUs that multiply bfloat16 in hardware (AVX512-BF16,
AMX-BF16: :func:`serving.model.cpu_isa.has_native_bf16`). Weights and activations carry 8
bits of mantissa, products accumulate in float32, and the head (pooling + linear + sigmoid)
stays float32; the model's own gate decides whether it may serve (``bf16_ok``, the same rule
as int8 with a p99.9 score-move limit of 0.03: ``training.gate``).

:func:`prepare_encoder` makes three changes to an encoder already cast to bfloat16, each
measured (2026-12-02, 2-core AMD EPYC with AVX512-BF16, the default model, 32 x 64 tokens,
ms per batch, best of 3; HF float32: 377):

1. torch's bfloat16 forward as it comes: 173 ms (2.16x HF float32);
2. attention as matmul + softmax ("eager") instead of torch's CPU flash attention, which
   costs more than it saves at these lengths: 160 ms (2.36x); at 8 x 256 the two are equal;
3. every Linear as ``torch.ops.mkldnn._linear_pointwise`` on weights packed once for oneDNN
   (``_reorder_linear_weight``), the bias added and the FFN's GELU applied inside the GEMM:
   146 ms (2.59x). The unfused GELU alone took 10 % of the forward (bfloat16 erf) and each
   ``addmm`` copied its output once more. Fusing the residual add as well
   (``_linear_pointwise.binary``) measured no faster and is not used.

Where the fused kernels cannot run (torch built without oneDNN, or a CPU oneDNN has no
bfloat16 for), the Linears stay torch's own bfloat16 ones: slower, never wrong.

Tuning: nothing to set. ``PACK_ROWS_HINT`` is the batch rows (tokens) oneDNN packs the
weights for; any other row count runs correctly on the same packed weights.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

ATTENTION = "eager"
PACK_ROWS_HINT = 2048  # tokens in a typical CPU batch (32 x 64)
# HF ``hidden_act`` -> oneDNN post-op (attr, algorithm): "none" = the exact (erf) GELU.
FUSED_ACTIVATIONS = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
}


def fused_kernels_available() -> bool:
    """oneDNN's bfloat16 GEMM with packed weights runs here (checked on a tiny Linear)."""
    try:
        if not (torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):  # fmt: skip
            return False
        lin = nn.Linear(16, 8).to(torch.bfloat16)
        x = torch.randn(4, 16, dtype=torch.bfloat16)
        got = PackedLinear(lin)(x)
        return bool(torch.allclose(got.float(), lin(x).float(), atol=0.05, rtol=0.02))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class PackedLinear(nn.Module):
    """``post_op(x @ W^T + b)`` in one oneDNN call on bfloat16 weights packed at build time
    (inference only: the packed weights have no gradient and are not in the state dict)."""

    def __init__(self, linear: nn.Linear, attr: str = "none", algorithm: str = "") -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16).contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.attr, self.algorithm = attr, algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.packed_weight, self.bias, self.attr, [], self.algorithm
        )

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, post-op {self.attr}"


class FusedIntermediate(nn.Module):
    """A transformer FFN's first half (``act(dense(x))``, HF ``*Intermediate``) as one GEMM."""

    def __init__(self, dense: PackedLinear) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


def prepare_encoder(encoder: nn.Module) -> nn.Module:
    """Make a bfloat16 HF encoder (already ``.to(torch.bfloat16)``) run as fast as this CPU
    allows, in place (module doc); returns it."""
    if isinstance(encoder, PreTrainedModel):
        encoder.set_attn_implementation(ATTENTION)
    if not fused_kernels_available():
        log.warning("bfloat16 on CPU without oneDNN's fused kernels: torch's own bfloat16 "
                    "Linears serve (slower)")  # fmt: skip
        return encoder
    act = getattr(getattr(encoder, "config", None), "hidden_act", None)
    post_op = FUSED_ACTIVATIONS.get(act) if isinstance(act, str) else None
    if post_op:  # HF *Intermediate: dense + intermediate_act_fn -> one GEMM
        for parent in list(encoder.modules()):
            for name, child in list(parent.named_children()):
                dense = getattr(child, "dense", None)
                if isinstance(dense, nn.Linear) and hasattr(child, "intermediate_act_fn"):
                    setattr(parent, name, FusedIntermediate(PackedLinear(dense, *post_op)))
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
    return encoder
