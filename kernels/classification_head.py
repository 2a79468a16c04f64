"""Classification head: masked pool -> linear (H -> C) + bias -> sigmoid/softmax -> fp32 scores.

This file holds the torch reference used on CPU (and as the ground truth for
the fused Triton kernel of the fast-path work). It reads the last hidden
states once per batch; everything after the pool is a (B, C) problem.
"""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["mean", "cls"]
Activation = Literal["sigmoid", "softmax"]


def pool_reference(
    hidden: torch.Tensor,  # (B, T, H) last hidden states
    attention_mask: torch.Tensor,  # (B, T) 1 for real tokens, 0 for padding
    pooling: Pooling,
) -> torch.Tensor:  # (B, H) in fp32
    if pooling == "cls":
        return hidden[:, 0, :].float()
    mask = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    summed = (hidden.float() * mask).sum(dim=1)  # (B, H)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / count


def head_logits_reference(
    hidden: torch.Tensor,  # (B, T, H)
    attention_mask: torch.Tensor,  # (B, T)
    weight: torch.Tensor,  # (C, H)
    bias: torch.Tensor,  # (C,)
    pooling: Pooling,
) -> torch.Tensor:  # (B, C) fp32 logits
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
) -> torch.Tensor:  # (B, C) fp32 scores in [0, 1]
    return activate(
        head_logits_reference(hidden, attention_mask, weight, bias, pooling), activation
    )


def head_scores(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooling: Pooling,
    activation: Activation,
) -> torch.Tensor:
    """Launcher: the one entry point the engine calls.

    Uses the torch reference today on every device; the fused Triton kernel
    (fast-path issue) plugs in here for CUDA tensors.
    """
    return head_scores_reference(hidden, attention_mask, weight, bias, pooling, activation)
