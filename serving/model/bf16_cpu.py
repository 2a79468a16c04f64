"""bfloat16 on CPU: the model core as a TorchScript trace of the bfloat16 model.

What ``MODSERVE_DTYPE=bfloat16`` serves on CPU, and what ``MODSERVE_DTYPE=auto`` times
against the other gated paths on CPUs that multiply bfloat16 in hardware (AVX512-BF16,
AMX-BF16: :func:`serving.model.cpu_isa.has_native_bf16`). The encoder's weights and
activations carry 8 bits of mantissa, oneDNN accumulates products in float32, and the head
(pooling + linear + sigmoid) stays float32; the model's own gate decides whether it may serve
(``bf16_ok``: the int8 rule with a p99.9 score-move limit of 0.03, ``training.gate``).

:func:`gil_free_core` makes three changes, each measured (2026-12-02, 2-core AMD EPYC with
AVX512-BF16, the default model, 32 x 64 tokens, 2 threads, ms per batch, best of 3-5
interleaved rounds; HF float32 355-377, this machine's runs vary by ~10 %):

1. attention as matmul + softmax ("eager") instead of torch's CPU flash attention ("sdpa")
   for batches under 4,096 tokens, where flash attention costs more than it saves: 173 ->
   160 ms at 32 x 64. From 4,096 tokens up it is the other way (traced, packed: 32 x 128
   400 eager vs 338 sdpa, 32 x 256 1,226 vs 856; 8 x 128 82 vs 89, 8 x 256 188 vs 204), so
   the core is traced once with each and picks by the batch's size;
2. every Linear as one oneDNN call on bfloat16 weights packed once at load
   (``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``), the bias added and
   the FFN's GELU applied inside the GEMM: the unfused GELU alone took 10 % of the forward
   (bfloat16 erf) and each ``addmm`` copied its output once more. Fusing the residual add as
   well (``_linear_pointwise.binary``) measured no faster and is not used;
3. the forward traced once at load (``torch.jit.trace``) and run by TorchScript, which
   releases the GIL for the whole forward. An eager torch forward takes the GIL back between
   its ~300 ops, so beside the server's event loop and a second core worker it waits: with a
   busy Python thread beside it, an eager forward (5 x 56 tokens) ran once a second, the
   traced one 15.5 times, and the busy thread kept its full speed. End to end (32 clients,
   ``benchmarks.load``) the eager form of 1 + 2 answered 151.6 inputs/s at 1.67 busy cores,
   ONNX Runtime int8 166.2; traced, 1 alone gave 192.6 at 1.91 cores. Traced 1 + 2: 140 ms,
   against 183 for traced 1 and 163 for eager 1 + 2 in the same run.

The tracer cannot record ``_linear_pointwise`` called from Python (its ``Scalar?[]``
argument), so :class:`PackedLinear` calls it through a TorchScript function, which the trace
keeps. ``torch.jit.freeze`` + ``optimize_for_inference``: no faster, not used. Where oneDNN
has no bfloat16 (torch without it, or a CPU oneDNN cannot run it on), the Linears stay
torch's own (still traced); where the trace fails or disagrees with the eager model, the eager
model serves (correct, GIL-bound).

The trace records one path through the model: it is made with padding in its example batch
(so the attention mask is applied, as every real batch needs), checked against the eager
model on two other shapes before it is used, and rebuilt at every load (about a second for
both attentions).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

# Attention per batch size (tokens = batch x length): matmul + softmax ("eager") for small
# batches, torch's flash attention ("sdpa") from SDPA_MIN_TOKENS up (module doc, step 1).
ATTENTION = "eager"
LARGE_BATCH_ATTENTION = "sdpa"
SDPA_MIN_TOKENS = 4096
PACK_ROWS_HINT = 2048  # tokens of a typical CPU batch (32 x 64); any other count runs correctly
# HF ``hidden_act`` -> oneDNN post-op (attr, algorithm): "none" = the exact (erf) GELU.
FUSED_ACTIVATIONS = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
}
# ``_linear_pointwise`` through TorchScript: the tracer cannot record its Scalar?[] argument
# from Python, but keeps a call to a script function.
_ONEDNN = torch.jit.CompilationUnit(
    """
def linear(x: Tensor, w: Tensor, b: Optional[Tensor], attr: str, algorithm: str) -> Tensor:
    scalars = torch.jit.annotate(List[Optional[number]], [])
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, scalars, algorithm)
"""
)
# (batch, tokens) of the example batch the trace is recorded with, and of the check batches
TRACE_SHAPE = (3, 24)
CHECK_SHAPES = ((1, 7), (5, 61))
CHECK_TOLERANCE = 1e-3  # traced vs eager, same bfloat16 weights: the same ops, so ~0


def fused_kernels_available() -> bool:
    """oneDNN's bfloat16 GEMM on packed weights runs here (checked on a tiny Linear)."""
    try:
        if not (torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):  # fmt: skip
            return False
        lin = nn.Linear(16, 8).to(torch.bfloat16)
        x = torch.randn(4, 16, dtype=torch.bfloat16)
        with torch.no_grad():
            got, want = PackedLinear(lin)(x).float(), lin(x).float()
        return bool(torch.allclose(got, want, atol=0.05, rtol=0.02))
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
        return _ONEDNN.linear(x, self.packed_weight, self.bias, self.attr, self.algorithm)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, post-op {self.attr}"


class FusedIntermediate(nn.Module):
    """A transformer FFN's first half (``act(dense(x))``, HF ``*Intermediate``) as one GEMM."""

    def __init__(self, dense: PackedLinear) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


def pack_linears(encoder: nn.Module) -> None:
    """Every Linear of ``encoder`` as a :class:`PackedLinear`, the FFN's activation fused into
    its first GEMM where oneDNN has it, in place."""
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


class TracedCore(nn.Module):
    """The traced forward ``(B, T) ids, mask -> (B, L) float32 scores``: ``small`` for batches
    under ``SDPA_MIN_TOKENS`` tokens, ``large`` (another attention) from there; ``source`` is
    the eager model both were traced from (its encoder config, head, labels)."""

    def __init__(
        self, small: torch.jit.ScriptModule, large: torch.jit.ScriptModule, source: nn.Module
    ) -> None:
        super().__init__()
        self.small, self.large = small, large
        self.source = source

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        big = input_ids.numel() >= SDPA_MIN_TOKENS
        return (self.large if big else self.small)(input_ids, attention_mask)


def _batch(shape: tuple[int, int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with the first row half padding (a real batch of unequal texts)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, max(1001, vocab), shape, generator=gen)
    mask = torch.ones_like(ids)
    mask[0, max(1, shape[1] // 2) :] = 0
    return ids * mask, mask


def _trace(model: nn.Module, vocab: int) -> torch.jit.ScriptModule:
    """``model`` traced, and checked against itself on other shapes (raises if it differs)."""
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python conditions it fixes (mask padding, causal flag);
        # both are constant for an encoder with an attention mask, at every length.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _batch(TRACE_SHAPE, vocab, 0), check_trace=False)
        for i, shape in enumerate(CHECK_SHAPES, start=1):
            ids, mask = _batch(shape, vocab, i)
            diff = (traced(ids, mask) - model(ids, mask)).abs().max().item()
            if not diff <= CHECK_TOLERANCE:
                raise RuntimeError(f"traced scores differ from eager by {diff} at {shape}")
    return traced


def gil_free_core(model: nn.Module) -> nn.Module:
    """``model`` (a modserve model whose encoder is already bfloat16) as served on CPU: packed
    Linears, traced once per attention (module doc). Falls back to the eager model, with a
    warning, if a trace fails or disagrees with it."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and fused_kernels_available():
        pack_linears(encoder)
    elif encoder is not None:
        log.warning("bfloat16 on CPU without oneDNN's fused kernels: torch's own bfloat16 "
                    "Linears serve (slower)")  # fmt: skip
    vocab = int(getattr(getattr(encoder, "config", None), "vocab_size", 30522))
    model.eval()
    traced = {}
    try:
        for attention in (LARGE_BATCH_ATTENTION, ATTENTION):  # the source ends on ATTENTION
            if isinstance(encoder, PreTrainedModel):
                encoder.set_attn_implementation(attention)
            traced[attention] = _trace(model, vocab)
    except Exception as e:  # serve eager (GIL-bound, still correct) rather than not at all
        log.warning("bfloat16 core not traced (%s); serving it eager", e)
        return model
    return TracedCore(traced[ATTENTION], traced[LARGE_BATCH_ATTENTION], model)
