"""The fused Triton head kernel agrees with the torch reference (tutorial 02 style).

On a CUDA machine the kernel runs natively; on CPU it runs in Triton's interpreter
(``TRITON_INTERPRET=1``, which tests/conftest.py sets before anything imports triton:
the flag is read when ``@triton.jit`` decorates, including triton's own library
functions). The whole module is skipped where triton is not installed.

Tolerances (scores are probabilities in [0, 1]): fp32 inputs ``atol=1e-5, rtol=1e-4``;
fp16/bf16 inputs ``atol=5e-5, rtol=1e-3``. Both sides upcast the same half values to
fp32, so the only differences are summation order (and fast exp on GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
pytest.importorskip("triton", exc_type=ImportError)  # missing or broken install

import kernels.classification_head as ch  # noqa: E402

if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU and TRITON_INTERPRET is not 1 (tests/conftest.py sets it)", allow_module_level=True
    )

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.float16: {"atol": 5e-5, "rtol": 1e-3},
    torch.bfloat16: {"atol": 5e-5, "rtol": 1e-3},
}
# (lengths of the real tokens per row, padded length T, hidden H, classes C)
SHAPES = [
    ([1, 37, 5, 20, 0, 36, 2], 37, 40, 8),  # odd batch, odd T/H, an all-padding row
    ([64, 3, 17], 64, 384, 13),  # MiniLM hidden size, 13 OpenAI categories
    ([9], 9, 384, 13),  # batch of one
    ([130, 1, 77, 128, 64], 130, 96, 13),  # T not a multiple of the 32-token tile
]


def _inputs(lengths: list[int], t: int, h: int, c: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), t, h, generator=g).to(DEVICE, dtype)
    mask = torch.zeros(len(lengths), t, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    weight = (torch.randn(c, h, generator=g) * h**-0.5).to(DEVICE, dtype)
    bias = torch.randn(c, generator=g).to(DEVICE)
    return hidden, mask.to(DEVICE), weight, bias


def _query(c: int, h: int, dtype: torch.dtype = torch.float32, seed: int = 7) -> torch.Tensor:
    """Attention queries sharp enough that the weights are far from uniform (scores ~ N(0, 9))."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(c, h, generator=g) * 3 * h**-0.5).to(DEVICE, dtype)


POOLINGS = ["mean", "cls", "max", "attention"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{len(s[0])}-T{s[1]}-H{s[2]}-C{s[3]}")
def test_fused_kernel_matches_reference(shape, dtype, pooling, activation) -> None:
    hidden, mask, weight, bias = _inputs(*shape, dtype)
    query = _query(shape[3], shape[2], dtype) if pooling == "attention" else None
    scores, flags = ch.fused_head_scores(
        hidden, mask, weight, bias, pooling, activation, query=query
    )
    ref = ch.head_scores_reference(hidden, mask, weight, bias, pooling, activation, query=query)
    assert flags is None
    assert scores.dtype == torch.float32 and scores.shape == ref.shape
    torch.testing.assert_close(scores, ref, **TOL[dtype])
    if activation == "softmax":
        torch.testing.assert_close(scores.sum(-1), torch.ones(len(shape[0]), device=DEVICE))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_fused_flags_match_thresholds(pooling) -> None:
    hidden, mask, weight, bias = _inputs([5, 12, 1, 12, 7], 12, 40, 13, torch.float32, seed=1)
    query = _query(13, 40) if pooling == "attention" else None
    thresholds = torch.linspace(0.05, 0.95, 13)
    _, flags = ch.fused_head_scores(
        hidden, mask, weight, bias, pooling, "sigmoid", thresholds=thresholds, query=query
    )
    ref = ch.head_scores_reference(hidden, mask, weight, bias, pooling, "sigmoid", query=query)
    expected = ch.flags_reference(ref, thresholds)
    clear = (ref - thresholds.to(DEVICE)).abs() > 1e-4  # ignore exact ties at the threshold
    assert flags is not None and flags.dtype == torch.bool
    assert torch.equal(flags[clear], expected[clear])
    assert flags.any() and not flags.all()  # the thresholds really split the scores


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_padding_does_not_change_pooled_scores(pooling) -> None:
    """Extra padding columns (as from a longer length bucket) leave scores unchanged."""
    hidden, mask, weight, bias = _inputs([10, 3], 16, 40, 8, torch.float32, seed=2)
    query = _query(8, 40) if pooling == "attention" else None
    wide = torch.cat([hidden, torch.randn(2, 48, 40, device=DEVICE) * 100], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(2, 48, dtype=mask.dtype, device=DEVICE)], dim=1)
    for fn in (ch.fused_head_scores, ch.head_scores_reference):
        short = fn(hidden, mask, weight, bias, pooling, "sigmoid", query=query)
        long = fn(wide, wide_mask, weight, bias, pooling, "sigmoid", query=query)
        if isinstance(short, tuple):
            short, long = short[0], long[0]
        torch.testing.assert_close(short, long, atol=1e-6, rtol=1e-5)


def test_zero_query_attention_is_mean_pooling() -> None:
    """A mean-pooled model gains attention pooling without changing a score (training starts
    there), in the reference and in the kernel."""
    hidden, mask, weight, bias = _inputs([10, 3, 16], 16, 40, 8, torch.float32, seed=6)
    mean = ch.head_scores_reference(hidden, mask, weight, bias, "mean", "sigmoid")
    zero = torch.zeros(8, 40, device=DEVICE)
    ref = ch.head_scores_reference(hidden, mask, weight, bias, "attention", "sigmoid", query=zero)
    fused, _ = ch.fused_head_scores(hidden, mask, weight, bias, "attention", "sigmoid", query=zero)
    torch.testing.assert_close(ref, mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused, mean, atol=1e-6, rtol=1e-5)


def test_attention_reads_the_token_its_query_points_at() -> None:
    """One token among 40 decides a category when its query points at it: the diluted case
    mean pooling loses (the mean moves the logit by 1/40 of that token's value)."""
    hidden = torch.zeros(1, 40, 16, device=DEVICE)
    hidden[0, :, 0] = 1.0  # every token: channel 0
    hidden[0, 23, 1] = 1.0  # one token also has channel 1
    mask = torch.ones(1, 40, dtype=torch.int64, device=DEVICE)
    weight = torch.zeros(1, 16, device=DEVICE)
    weight[0, 1] = 8.0  # the category reads channel 1
    bias = torch.tensor([-4.0], device=DEVICE)
    query = torch.zeros(1, 16, device=DEVICE)
    query[0, 1] = 20.0  # ... and attends to it
    weights = ch.attention_weights(hidden, mask, query)
    assert weights[0, 0, 23] > 0.99 and torch.allclose(weights.sum(-1), torch.ones(1, 1))
    mean = ch.head_scores_reference(hidden, mask, weight, bias, "mean", "sigmoid")
    ref = ch.head_scores_reference(hidden, mask, weight, bias, "attention", "sigmoid", query=query)
    fused, _ = ch.fused_head_scores(hidden, mask, weight, bias, "attention", "sigmoid", query=query)
    assert mean.item() < 0.05 and ref.item() > 0.95
    torch.testing.assert_close(fused, ref, **TOL[torch.float32])


def test_attention_without_query_is_an_error() -> None:
    hidden, mask, weight, bias = _inputs([4], 4, 40, 8, torch.float32)
    for fn in (ch.fused_head_scores, ch.head_scores_reference):
        with pytest.raises(ValueError, match="needs the head's query"):
            fn(hidden, mask, weight, bias, "attention", "sigmoid")


def test_non_contiguous_hidden_states() -> None:
    hidden, mask, weight, bias = _inputs([7, 20, 3], 20, 64, 13, torch.float32, seed=3)
    strided = hidden.transpose(1, 2).contiguous().transpose(1, 2)  # same values, H-major
    assert not strided.is_contiguous()
    scores, _ = ch.fused_head_scores(strided, mask, weight, bias, "mean", "sigmoid")
    ref = ch.head_scores_reference(hidden, mask, weight, bias, "mean", "sigmoid")
    torch.testing.assert_close(scores, ref, **TOL[torch.float32])


def test_head_scores_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, mask, weight, bias = _inputs([4, 9], 9, 40, 8, torch.float32, seed=4)
    ref = ch.head_scores_reference(hidden, mask, weight, bias, "mean", "sigmoid")
    for mode in ("triton", "torch", "auto"):
        ch.forget_checks()
        for _ in range(2):  # first call self-checks, the second uses the chosen path
            out = ch.head_scores(hidden, mask, weight, bias, "mean", "sigmoid", kernel=mode)
            torch.testing.assert_close(out, ref, **TOL[torch.float32])
        if mode == "triton" or ON_GPU:
            assert ch.checked_devices() == {hidden.device: True}
        else:
            assert ch.checked_devices() == {}
    with pytest.raises(ValueError, match="choose auto, triton or torch"):
        ch.head_scores(hidden, mask, weight, bias, "mean", "sigmoid", kernel="fast")  # type: ignore[arg-type]


def test_kernel_that_disagrees_falls_back_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, mask, weight, bias = _inputs([4, 9], 9, 40, 8, torch.float32, seed=5)
    ref = ch.head_scores_reference(hidden, mask, weight, bias, "mean", "sigmoid")
    ch.forget_checks()
    monkeypatch.setattr(ch, "fused_head_scores", lambda *a, **k: (torch.zeros_like(ref), None))
    for _ in range(2):
        out = ch.head_scores(hidden, mask, weight, bias, "mean", "sigmoid", kernel="triton")
        torch.testing.assert_close(out, ref)
    assert ch.checked_devices() == {hidden.device: False}
    ch.forget_checks()
