"""Classification head: masked pool -> linear (H -> C) + bias -> sigmoid/softmax -> fp32 scores.

Poolings: ``mean`` over real tokens, ``cls`` (first token), ``max`` (per channel over real
tokens) and ``attention``: one learned query per category, ``a[c] = softmax_t(q[c] . h_t)``
over real tokens, category ``c`` reads ``sum_t a[c, t] h_t`` — so a short harmful span can
decide a category's score however much benign text surrounds it. A zero query is exactly
mean pooling (a mean-pooled model continues training from where it was).

Structure after Triton tutorial 02-fused-softmax: the torch reference (used on CPU
and as the ground truth), the fused ``@triton.jit`` kernel, its launcher
``fused_head_scores`` and the dispatcher ``head_scores`` the model calls. Tests:
tests/unit/kernels/test_head_kernel.py; benchmark: benchmarks/head_kernel.py (perf_report).
The kernel reads the last hidden states once; everything after the pool is (B, C).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max", "attention"]
MASKED_SCORE = -1e30  # attention score of a padding token (finite: no inf - inf = nan)
Activation = Literal["sigmoid", "softmax"]


def pool_reference(
    hidden: torch.Tensor,  # (B, T, H) last hidden states
    attention_mask: torch.Tensor,  # (B, T) 1 for real tokens, 0 for padding
    pooling: Pooling,
) -> torch.Tensor:  # (B, H) in fp32; attention pools per category: see attention_weights
    if pooling == "cls":
        return hidden[:, 0, :].float()
    mask = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    if pooling == "max":  # a row without real tokens pools to 0
        real = mask > 0
        pooled = hidden.float().masked_fill(~real, float("-inf")).amax(dim=1)
        return torch.where(real.any(dim=1), pooled, torch.zeros_like(pooled))
    if pooling != "mean":
        raise ValueError(f"pooling {pooling!r} has no single pooled vector; see head_logits")
    summed = (hidden.float() * mask).sum(dim=1)  # (B, H)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / count


def attention_weights(
    hidden: torch.Tensor,  # (B, T, H)
    attention_mask: torch.Tensor,  # (B, T)
    query: torch.Tensor,  # (C, H) one learned query per category
) -> torch.Tensor:  # (B, C, T) fp32, each row sums to 1 over real tokens (0 without any)
    real = (attention_mask != 0).unsqueeze(1)  # (B, 1, T)
    scores = torch.einsum("bth,ch->bct", hidden.float(), query.float())
    weights = torch.softmax(scores.masked_fill(~real, MASKED_SCORE), dim=-1) * real
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-30)


def head_logits_reference(
    hidden: torch.Tensor,  # (B, T, H)
    attention_mask: torch.Tensor,  # (B, T)
    weight: torch.Tensor,  # (C, H)
    bias: torch.Tensor,  # (C,)
    pooling: Pooling,
    query: torch.Tensor | None = None,  # (C, H), attention pooling only
) -> torch.Tensor:  # (B, C) fp32 logits
    if pooling == "attention":
        if query is None:
            raise ValueError("attention pooling needs the head's query (classifier.query)")
        # logit[c] = sum_t a[c, t] (w[c] . h_t) + b[c]: the (B, C, H) pooled states never exist
        values = hidden.float() @ weight.float().t()  # (B, T, C)
        weights = attention_weights(hidden, attention_mask, query)  # (B, C, T)
        return (weights * values.transpose(1, 2)).sum(dim=-1) + bias.float()
    pooled = pool_reference(hidden, attention_mask, pooling)
    return pooled @ weight.float().t() + bias.float()


def activate(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """Multi-label models use an independent sigmoid per category, never a softmax across them."""
    if activation == "sigmoid":
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=-1)


def head_scores_reference(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooling: Pooling,
    activation: Activation,
    query: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, C) fp32 scores in [0, 1]
    return activate(
        head_logits_reference(hidden, attention_mask, weight, bias, pooling, query), activation
    )


def flags_reference(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, C) scores, (C,) thresholds -> (B, C) bool flags (``score >= threshold``)."""
    return scores >= thresholds.to(device=scores.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Fused Triton kernel (optional: triton is a dev/GPU extra, the server runs without it)
# --------------------------------------------------------------------------------------------
#
# One program per batch row reads that row's hidden states exactly once, tile by tile.
#
# mean / cls / max (``_fused_head_kernel``):
#   for each H tile (BLOCK_H wide):
#       pooled[h] = sum_t mask[t] * hidden[t, h] / max(sum_t mask[t], 1)   (mean)
#                 | hidden[0, h]  |  max_{t real} hidden[t, h]             (cls | max)
#       logits[c] += sum_h W[c, h] * pooled[h]                              (C <= BLOCK_C)
# attention (``_fused_attention_head_kernel``), an online softmax over token tiles:
#   for each T tile: s[t, c] = q[c] . h_t,  v[t, c] = W[c] . h_t            (H tiles inside)
#       running max m[c], running sum l[c] += exp(s - m), running acc[c] += exp(s - m) v
#   logits[c] = acc[c] / l[c]          (= W[c] . sum_t a[c, t] h_t, never built as (C, H))
# then, both:
#   scores = sigmoid(logits + b)  |  softmax(logits + b)      -> fp32 (B, C)
#   flags  = scores >= thresholds                             -> int8 (B, C), optional
#
# Padding tokens (mask == 0) are masked out of the loads, so they cost no memory traffic.
# Tuning knobs (all in ``fused_head_scores``): BLOCK_T (tokens per tile, 32; attention 16),
# BLOCK_H (hidden channels per tile, <= 128; attention 64: its tile products are
# BLOCK_T x BLOCK_C x BLOCK_H in registers) and num_warps (4). The head is < 1 % of the
# encoder's time, so the defaults favour simplicity.

try:  # pragma: no cover - exercised where triton is installed
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the server must run where triton is not importable
    HAS_TRITON = False

HeadKernel = Literal["auto", "triton", "torch"]  # MODSERVE_HEAD_KERNEL (Settings.head_kernel)
BLOCK_T_TOKENS = 32
BLOCK_H_MAX = 128
ATTENTION_BLOCK_T_TOKENS = 16
ATTENTION_BLOCK_H_MAX = 64
POOL_CODES = {"mean": 0, "cls": 1, "max": 2}  # the kernel's POOL constexpr

if HAS_TRITON:

    @triton.jit
    def _load_tile(ptr, rows, cols, stride_r, stride_c, mask, other):
        """``ptr[rows, cols]`` as fp32 (rows x cols tile), ``other`` where ``mask`` is off."""
        tiles = ptr + rows[:, None] * stride_r + cols[None, :] * stride_c
        return tl.load(tiles, mask=mask, other=other).to(tl.float32)

    @triton.jit
    def _store_scores(
        logits,
        bias_ptr,
        offs_c,
        c_ok,
        thr_ptr,
        scores_ptr,
        flags_ptr,
        row,
        stride_sb,
        stride_fb,
        SOFTMAX: tl.constexpr,
        WRITE_FLAGS: tl.constexpr,
    ):
        """logits + bias -> sigmoid | softmax -> fp32 scores (and int8 flags) of ``row``."""
        logits += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        if SOFTMAX:
            z = tl.where(c_ok, logits, float("-inf"))
            e = tl.exp(z - tl.max(z, axis=0))
            scores = e / tl.sum(e, axis=0)
        else:  # multi-label: an independent sigmoid per category
            scores = 1.0 / (1.0 + tl.exp(-logits))
        tl.store(scores_ptr + row * stride_sb + offs_c, scores, mask=c_ok)
        if WRITE_FLAGS:
            thr = tl.load(thr_ptr + offs_c, mask=c_ok, other=2.0)
            tl.store(flags_ptr + row * stride_fb + offs_c, (scores >= thr).to(tl.int8), mask=c_ok)

    @triton.jit
    def _fused_head_kernel(
        hidden_ptr,  # (B, T, H) any float dtype
        mask_ptr,  # (B, T) integer/float, 1 = real token
        weight_ptr,  # (C, H)
        bias_ptr,  # (C,)
        thr_ptr,  # (C,) fp32 thresholds (read only when WRITE_FLAGS)
        scores_ptr,  # (B, C) fp32 out
        flags_ptr,  # (B, C) int8 out (written only when WRITE_FLAGS)
        T,
        H,
        C,
        stride_hb,
        stride_ht,
        stride_hh,
        stride_mb,
        stride_mt,
        stride_wc,
        stride_wh,
        stride_sb,
        stride_fb,
        POOL: tl.constexpr,  # 0 mean, 1 cls, 2 max (POOL_CODES)
        SOFTMAX: tl.constexpr,
        WRITE_FLAGS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        offs_t = tl.arange(0, BLOCK_T)
        offs_h = tl.arange(0, BLOCK_H)
        offs_c = tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        h_row = hidden_ptr + row * stride_hb
        m_row = mask_ptr + row * stride_mb

        denom = 1.0
        if POOL == 0:
            count = tl.zeros([BLOCK_T], dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                t = t0 + offs_t
                count += tl.load(m_row + t * stride_mt, mask=t < T, other=0).to(tl.float32)
            denom = tl.maximum(tl.sum(count, axis=0), 1.0)

        logits = tl.zeros([BLOCK_C], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + offs_h
            h_ok = h < H
            if POOL == 1:  # CLS: the first token's hidden state
                pooled = tl.load(h_row + h * stride_hh, mask=h_ok, other=0.0).to(tl.float32)
            else:
                if POOL == 0:
                    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
                else:
                    acc = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
                for t0 in range(0, T, BLOCK_T):
                    t = t0 + offs_t
                    m = tl.load(m_row + t * stride_mt, mask=t < T, other=0).to(tl.float32)
                    real = (m[:, None] != 0.0) & h_ok[None, :]
                    if POOL == 0:
                        tile = _load_tile(h_row, t, h, stride_ht, stride_hh, real, 0.0)
                        acc += tl.sum(tile * m[:, None], axis=0)
                    else:
                        tile = _load_tile(h_row, t, h, stride_ht, stride_hh, real, float("-inf"))
                        acc = tl.maximum(acc, tl.max(tile, axis=0))
                if POOL == 0:  # noqa: SIM108 (a constexpr branch in @triton.jit)
                    pooled = acc / denom
                else:  # a row without real tokens pools to 0, as the reference does
                    pooled = tl.where(acc == float("-inf"), 0.0, acc)
            ch_ok = c_ok[:, None] & h_ok[None, :]
            w = _load_tile(weight_ptr, offs_c, h, stride_wc, stride_wh, ch_ok, 0.0)  # (C, H)
            logits += tl.sum(w * pooled[None, :], axis=1)

        _store_scores(
            logits, bias_ptr, offs_c, c_ok, thr_ptr, scores_ptr, flags_ptr, row,
            stride_sb, stride_fb, SOFTMAX, WRITE_FLAGS,
        )  # fmt: skip

    @triton.jit
    def _fused_attention_head_kernel(
        hidden_ptr,  # (B, T, H) any float dtype
        mask_ptr,  # (B, T) integer/float, 1 = real token
        query_ptr,  # (C, H) one attention query per category
        weight_ptr,  # (C, H)
        bias_ptr,  # (C,)
        thr_ptr,  # (C,) fp32 thresholds (read only when WRITE_FLAGS)
        scores_ptr,  # (B, C) fp32 out
        flags_ptr,  # (B, C) int8 out (written only when WRITE_FLAGS)
        T,
        H,
        C,
        stride_hb,
        stride_ht,
        stride_hh,
        stride_mb,
        stride_mt,
        stride_qc,
        stride_qh,
        stride_wc,
        stride_wh,
        stride_sb,
        stride_fb,
        SOFTMAX: tl.constexpr,
        WRITE_FLAGS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        offs_t = tl.arange(0, BLOCK_T)
        offs_h = tl.arange(0, BLOCK_H)
        offs_c = tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        h_row = hidden_ptr + row * stride_hb
        m_row = mask_ptr + row * stride_mb

        run_max = tl.full([BLOCK_C], -1e30, dtype=tl.float32)  # MASKED_SCORE
        run_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
        run_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + offs_t
            real = tl.load(m_row + t * stride_mt, mask=t < T, other=0).to(tl.float32) != 0.0
            s = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)  # q[c] . h_t
            v = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)  # W[c] . h_t
            for h0 in range(0, H, BLOCK_H):
                h = h0 + offs_h
                h_ok = h < H
                th_ok = real[:, None] & h_ok[None, :]
                tile = _load_tile(h_row, t, h, stride_ht, stride_hh, th_ok, 0.0)  # (T, H)
                ch_ok = c_ok[:, None] & h_ok[None, :]
                q = _load_tile(query_ptr, offs_c, h, stride_qc, stride_qh, ch_ok, 0.0)  # (C, H)
                w = _load_tile(weight_ptr, offs_c, h, stride_wc, stride_wh, ch_ok, 0.0)
                s += tl.sum(tile[:, None, :] * q[None, :, :], axis=2)
                v += tl.sum(tile[:, None, :] * w[None, :, :], axis=2)
            s = tl.where(real[:, None], s, -1e30)
            new_max = tl.maximum(run_max, tl.max(s, axis=0))
            p = tl.where(real[:, None], tl.exp(s - new_max[None, :]), 0.0)
            rescale = tl.exp(run_max - new_max)
            run_sum = run_sum * rescale + tl.sum(p, axis=0)
            run_acc = run_acc * rescale + tl.sum(p * v, axis=0)
            run_max = new_max

        logits = run_acc / tl.maximum(run_sum, 1e-30)
        _store_scores(
            logits, bias_ptr, offs_c, c_ok, thr_ptr, scores_ptr, flags_ptr, row,
            stride_sb, stride_fb, SOFTMAX, WRITE_FLAGS,
        )  # fmt: skip


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_head_scores(
    hidden: torch.Tensor,  # (B, T, H)
    attention_mask: torch.Tensor,  # (B, T)
    weight: torch.Tensor,  # (C, H)
    bias: torch.Tensor,  # (C,)
    pooling: Pooling,
    activation: Activation,
    thresholds: torch.Tensor | None = None,  # (C,) -> also return flags
    block_t_tokens: int = 0,
    num_warps: int = 4,
    query: torch.Tensor | None = None,  # (C, H), attention pooling only
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launcher of the fused kernels: (B, C) fp32 scores and, with thresholds, (B, C) bool flags.

    Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was
    imported. Tune ``block_t_tokens`` (power of two; 0 = 32, attention 16; larger = fewer
    loop trips, more registers) and ``num_warps`` (4 suits H <= 1024).
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed: pip install 'modserve[dev]' or use torch")
    if hidden.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            "the Triton head kernel needs CUDA tensors; on CPU set TRITON_INTERPRET=1 before "
            "importing triton (tests only) or use head_scores_reference"
        )
    if pooling == "attention" and query is None:
        raise ValueError("attention pooling needs the head's query (classifier.query)")
    bsz, tokens, hid = hidden.shape
    classes = weight.shape[0]
    if attention_mask.dtype == torch.bool:
        attention_mask = attention_mask.to(torch.uint8)
    scores = torch.empty((bsz, classes), device=hidden.device, dtype=torch.float32)
    flags = None
    if thresholds is not None:
        thresholds = thresholds.to(device=hidden.device, dtype=torch.float32).contiguous()
        flags = torch.empty((bsz, classes), device=hidden.device, dtype=torch.int8)
    if bsz == 0:
        return scores, None if flags is None else flags.bool()
    outputs = (
        scores if thresholds is None else thresholds,  # dummy pointer when unused
        scores, scores if flags is None else flags,
        tokens, hid, classes,
        hidden.stride(0), hidden.stride(1), hidden.stride(2),
        attention_mask.stride(0), attention_mask.stride(1),
    )  # fmt: skip
    tail = (scores.stride(0), scores.stride(0) if flags is None else flags.stride(0))
    block_c = max(triton.next_power_of_2(classes), 2)
    if pooling == "attention":
        assert query is not None
        _fused_attention_head_kernel[(bsz,)](
            hidden, attention_mask, query, weight, bias, *outputs,
            query.stride(0), query.stride(1), weight.stride(0), weight.stride(1), *tail,
            SOFTMAX=activation == "softmax",
            WRITE_FLAGS=flags is not None,
            BLOCK_T=block_t_tokens or ATTENTION_BLOCK_T_TOKENS,
            BLOCK_H=min(triton.next_power_of_2(hid), ATTENTION_BLOCK_H_MAX),
            BLOCK_C=block_c,
            num_warps=num_warps,
        )  # fmt: skip
    else:
        _fused_head_kernel[(bsz,)](
            hidden, attention_mask, weight, bias, *outputs,
            weight.stride(0), weight.stride(1), *tail,
            POOL=POOL_CODES[pooling],
            SOFTMAX=activation == "softmax",
            WRITE_FLAGS=flags is not None,
            BLOCK_T=block_t_tokens or BLOCK_T_TOKENS,
            BLOCK_H=min(triton.next_power_of_2(hid), BLOCK_H_MAX),
            BLOCK_C=block_c,
            num_warps=num_warps,
        )  # fmt: skip
    return scores, None if flags is None else flags.bool()


# --------------------------------------------------------------------------------------------
# Dispatch: the one entry point the model calls
# --------------------------------------------------------------------------------------------

_checked_devices: dict[torch.device, bool] = {}  # device -> the Triton kernel agreed on it


def checked_devices() -> dict[torch.device, bool]:
    """Devices whose first call compared the kernel with the reference; True = it agreed."""
    return dict(_checked_devices)


def forget_checks() -> None:
    """Check every device again on its next call (tests, or after a driver change)."""
    _checked_devices.clear()


def _use_triton(hidden: torch.Tensor, kernel: HeadKernel) -> bool:
    if kernel not in ("auto", "triton", "torch"):
        raise ValueError(f"head kernel {kernel!r}: choose auto, triton or torch")
    if kernel == "torch" or not HAS_TRITON:
        if kernel == "triton":
            raise RuntimeError("head kernel 'triton' asked for, but triton is not installed")
        return False
    return kernel == "triton" or hidden.device.type == "cuda"


HeadArgs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, Pooling, Activation]


def _self_check(
    hidden: torch.Tensor, args: HeadArgs, query: torch.Tensor | None, scores: torch.Tensor
) -> bool:
    """First use on a device: compare with the reference once; on any mismatch use torch."""
    ref = head_scores_reference(hidden, *args, query=query)
    ok = bool(torch.allclose(scores, ref, atol=1e-3, rtol=1e-3))
    if not ok:
        log.error(
            "Triton head kernel disagrees with the torch reference on %s: using torch "
            "(max |diff| %.3g)",
            hidden.device,
            (scores - ref).abs().max().item(),
        )
    return ok


def head_scores(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooling: Pooling,
    activation: Activation,
    kernel: HeadKernel = "auto",
    query: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launcher: the one entry point the model calls; (B, C) fp32 scores.

    ``kernel`` (``MODSERVE_HEAD_KERNEL``): ``auto`` (default) runs the fused Triton kernel on CUDA
    tensors when triton is importable and the torch reference otherwise; ``triton``
    forces the kernel (CPU tensors need ``TRITON_INTERPRET=1``: tests); ``torch`` forces
    the reference. On the first call per device the kernel's output is checked against
    the reference once; if it disagrees or fails to compile, that device stays on torch.
    ``query``: the attention pooling's (C, H) queries (``classifier.query``).
    """
    args: HeadArgs = (attention_mask, weight, bias, pooling, activation)
    if not _use_triton(hidden, kernel) or _checked_devices.get(hidden.device) is False:
        return head_scores_reference(hidden, *args, query=query)
    if hidden.device not in _checked_devices:
        try:
            scores, _ = fused_head_scores(hidden, *args, query=query)
            _checked_devices[hidden.device] = _self_check(hidden, args, query, scores)
        except Exception:
            log.exception("Triton head kernel failed on %s: using torch", hidden.device)
            _checked_devices[hidden.device] = False
        return head_scores_reference(hidden, *args, query=query)
    return fused_head_scores(hidden, *args, query=query)[0]
