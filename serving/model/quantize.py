"""CPU int8: W8A8 encoder Linear layers (``torch._int_mm``), smoothed, compiled.

What ``dtype: int8`` (``MODSERVE_DTYPE=int8``) runs on CPU, and what the accuracy gate
(``benchmarks/accuracy_gate.py``) and the export gate (``training/export.py``) measure.
Every ``nn.Linear`` inside the encoder becomes an :class:`Int8Linear`; the classification
head stays fp32.

* weights: int8, symmetric, one scale per output channel, quantised once at load;
* activations: int8, **asymmetric, one scale and zero point per token**, computed on the
  fly. Per-token scales matter because BERT's [CLS]/[SEP] positions carry activations far
  larger than ordinary tokens (one scale per tensor moved the default model's scores by up
  to 0.84). Asymmetric matters for the FFN output projection, whose input is a GELU output
  (>= -0.17): a symmetric scale would waste half of the 256 levels;
* smoothing (SmoothQuant, Xiao et al. 2023): a few input channels of every Linear carry
  outliers. With per-channel factors ``s`` the layer computes ``(x / s) @ (W * s)^T``: the
  same function in exact arithmetic, with the activation outliers moved into the weights,
  which are quantised per output channel and absorb them. ``s_j = a_j^alpha / w_j^(1-alpha)``
  with ``a_j`` the largest ``|x_j|`` seen on calibration text and ``w_j`` the largest
  ``|W_:j|``. The factors are computed at export (:func:`smoothing_factors`, 512 training
  texts, ``alpha`` 0.5) and shipped next to the weights (``int8_smoothing.safetensors``);
  without the file int8 still works, unsmoothed.

Measured on the default model's 5,997 validation rows (eager, vs fp32): largest score
move 0.246 with symmetric per-token activations, 0.119 smoothed, 0.084 smoothed and
asymmetric (what this module does); p99 0.031 -> 0.017.

Speed comes from ``torch.compile`` (inductor): the smoothing multiply, per-token min/max,
quantisation, the zero-point correction and the dequantising epilogue (+ bias, GELU,
residual + LayerNorm) fuse around oneDNN int8 GEMMs (VNNI/AMX): ~2.0x the fp32 HF
forward at batch 32 x 64 tokens on 2 Xeon cores; eager it is about fp32 speed. It compiles
once with dynamic batch and length, during the engine's warm-up, before ``/ready``. Costs:

* start-up: ~40-110 s of compilation on 2 cores (once per process);
* a C++ compiler (``g++``) must be present at run time (inductor's CPU backend);
* ``MODSERVE_INT8_COMPILE=0`` skips compilation: start-up in seconds, same scores,
  about fp32 speed. If compilation fails, the model falls back to eager with a warning.

Inductor's C++ kernels keep the GIL while they run (its Python binding for them does not
release it), and those fused loops are about half of the int8 forward: the event loop and a
second core thread would wait for them. :func:`release_gil_in_inductor_kernels` makes the
binding release it around the kernel (the arguments are still read with the GIL held); with
two core threads (``MODSERVE_CPU_WORKERS=2``) that took a 16 x 64 int8 forward loop from
14.8k to 19.1k tokens/s on 2 cores, and from 12.0k to 15.5k with a Python thread busy 1/3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from serving.config import Settings

log = logging.getLogger(__name__)

SMOOTHING_FILE = "int8_smoothing.safetensors"  # in the model's version directory
DEFAULT_SMOOTHING_ALPHA = 0.5  # 0.3 / 0.4 / 0.75 moved scores more on the default model


class Int8Linear(nn.Module):
    """``linear`` as W8A8: int8 weights per output channel, int8 activations per token.

    ``smoothing`` (per input channel, optional) is folded into the weights before they are
    quantised and divided out of the input in ``forward``.
    """

    weight_t: torch.Tensor  # (in, out) int8
    weight_scale: torch.Tensor  # (out,) float32
    weight_sum: torch.Tensor  # (out,) int32, sum of the int8 weights over the input
    bias: torch.Tensor | None
    inv_smoothing: torch.Tensor | None  # (in,) float32

    def __init__(self, linear: nn.Linear, smoothing: torch.Tensor | None = None) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        if smoothing is not None:
            w = w * smoothing.float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        wq = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", wq.t().contiguous())  # (in, out): _int_mm layout
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_sum", wq.sum(dim=1, dtype=torch.int32))  # zero-point term
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        inv = None if smoothing is None else (1.0 / smoothing.float())
        self.register_buffer("inv_smoothing", inv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features).float()
        if self.inv_smoothing is not None:
            x = x * self.inv_smoothing
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0.0)
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0.0)
        scale = ((hi - lo) / 255.0).clamp(min=1e-8)
        zero = torch.round(-128.0 - lo / scale).clamp(-128, 127)  # lo maps to -128
        q = torch.round(x / scale + zero).clamp(-128, 127).to(torch.int8)
        # x ~= scale * (q - zero)  =>  x @ W^T ~= scale * w_scale * (q @ Wq^T - zero * sum(Wq))
        acc = torch._int_mm(q, self.weight_t) - zero.to(torch.int32) * self.weight_sum
        y = acc.float() * (scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"smoothed={self.inv_smoothing is not None}"
        )


def _linears(encoder: nn.Module) -> list[tuple[nn.Module, str, str, nn.Linear]]:
    """(parent, attribute, qualified name, Linear) for every Linear in ``encoder``."""
    out = []
    for parent_name, parent in encoder.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                out.append((parent, attr, f"{parent_name}.{attr}" if parent_name else attr, child))
    return out


def quantize_encoder_int8(
    encoder: nn.Module,
    smoothing: dict[str, torch.Tensor] | None = None,
    compile_model: bool | None = None,
    keep_float: Collection[str] = (),
) -> nn.Module:
    """``encoder`` with every Linear as :class:`Int8Linear`, compiled unless disabled.

    ``smoothing``: per-Linear factors by qualified name (:func:`smoothing_factors`,
    :func:`load_smoothing`); missing names are quantised unsmoothed. ``keep_float``: Linears
    (qualified names) left in float32, the few whose int8 error moves scores most (the
    model config's ``int8_float_layers``, chosen by the export: :func:`int8_sensitivity`).
    The module is modified in place; pass a copy to keep a float32 reference. Returns it.
    """
    smoothing = smoothing or {}
    for parent, attr, name, linear in _linears(encoder):
        if name not in keep_float:
            setattr(parent, attr, Int8Linear(linear, smoothing.get(name)))
    if compile_model is None:
        compile_model = Settings().int8_compile  # MODSERVE_INT8_COMPILE
    if compile_model:
        _compile_forward(encoder)
    return encoder


def _run_hooked(handles: list[Any], run_calibration: Callable[[], object]) -> None:
    """``run_calibration`` (no grad) with ``handles``' hooks in place; removed after."""
    try:
        with torch.inference_mode():
            run_calibration()
    finally:
        for h in handles:
            h.remove()


def smoothing_factors(
    encoder: nn.Module,
    run_calibration: Callable[[], object],
    alpha: float = DEFAULT_SMOOTHING_ALPHA,
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors for every Linear of a float ``encoder``.

    ``run_calibration`` runs the model over calibration text (a few hundred representative
    inputs); the largest ``|x_j|`` each Linear sees per input channel is recorded meanwhile.
    ``alpha`` moves difficulty from activations (1.0 = all into the weights) to weights.
    """
    absmax: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0)
            absmax[name] = torch.maximum(absmax[name], x) if name in absmax else x

        return hook

    linears = _linears(encoder)
    _run_hooked(
        [lin.register_forward_pre_hook(record(name)) for _, _, name, lin in linears],
        run_calibration,
    )
    factors = {}
    for _, _, name, lin in linears:
        if name not in absmax:
            continue
        a = absmax[name].clamp(min=1e-5)
        w = lin.weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
        factors[name] = (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=1e-5)
    return factors


def int8_sensitivity(
    encoder: nn.Module,
    run_calibration: Callable[[], object],
    smoothing: dict[str, torch.Tensor] | None = None,
) -> list[tuple[str, float]]:
    """Every Linear of a float ``encoder`` with its int8 error, largest first: the relative
    squared error ``|int8(x) - linear(x)|^2 / |linear(x)|^2`` of its own output on the inputs
    it sees while ``run_calibration`` runs (each layer alone, on float inputs)."""
    smoothing = smoothing or {}
    err: dict[str, list[float]] = {}

    def record(name: str, q: Int8Linear) -> Callable[..., None]:
        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            diff = (q(inputs[0]) - out).float().pow(2).sum()
            e = err.setdefault(name, [0.0, 0.0])
            e[0] += float(diff)
            e[1] += float(out.float().pow(2).sum())

        return hook

    _run_hooked(
        [
            lin.register_forward_hook(record(name, Int8Linear(lin, smoothing.get(name))))
            for _, _, name, lin in _linears(encoder)
        ],
        run_calibration,
    )
    ranked = [(n, num / max(den, 1e-12)) for n, (num, den) in err.items()]
    return sorted(ranked, key=lambda x: -x[1])


def save_smoothing(factors: dict[str, torch.Tensor], version_dir: Path) -> None:
    path = version_dir / SMOOTHING_FILE
    save_file({k: v.contiguous() for k, v in factors.items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600; keep it readable


def load_smoothing(version_dir: Path) -> dict[str, torch.Tensor] | None:
    """The shipped factors, or None (int8 then runs unsmoothed, with a warning)."""
    path = version_dir / SMOOTHING_FILE
    if not path.is_file():
        log.warning("%s not found: int8 runs without smoothing (larger score moves)", path)
        return None
    return load_file(str(path))


_KERNEL_CALL = "kernel({}); Py_RETURN_NONE;"  # torch 2.13 CppPythonBindingsCodeCache
_KERNEL_CALL_WITHOUT_GIL = (
    "[&](auto... a) {{ struct NoGil {{ PyThreadState* s; NoGil() : s(PyEval_SaveThread()) {{}} "
    "~NoGil() {{ PyEval_RestoreThread(s); }} }} no_gil; kernel(a...); }}({}); Py_RETURN_NONE;"
)


def release_gil_in_inductor_kernels() -> bool:
    """Make inductor's Python binding of its C++ kernels drop the GIL while they run.

    The arguments are parsed (Python API) with the GIL held, then a scope guard releases it
    around ``kernel(...)``: pure C++ over raw pointers whose tensors the caller keeps alive.
    The template text is part of the source inductor hashes, so patched and unpatched
    kernels never share a cache entry. Returns False (and changes nothing) if this torch's
    template is not the one this was written for.
    """
    from torch._inductor.codecache import CppPythonBindingsCodeCache as cache

    if cache.call_entry_function == _KERNEL_CALL_WITHOUT_GIL:
        return True
    if cache.call_entry_function != _KERNEL_CALL:
        log.warning(
            "inductor kernel binding changed (%r): int8 kernels keep the GIL",
            cache.call_entry_function,
        )
        return False
    cache.call_entry_function = _KERNEL_CALL_WITHOUT_GIL
    return True


def _compile_forward(module: nn.Module) -> None:
    """Swap ``module.forward`` for a compiled one; fall back to eager if compiling fails.

    Compilation happens on the first call (the engine's warm-up), which decides: if it
    raises (no ``g++``, an inductor bug) a warning is logged and the eager forward is put
    back, so a host without a toolchain still serves, at about fp32 speed.
    """
    eager = module.forward
    release_gil_in_inductor_kernels()
    compiled = torch.compile(eager, dynamic=True)

    def first_call(*args: Any, **kwargs: Any) -> Any:
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:
            log.warning(
                "int8 encoder runs eager (about fp32 speed): torch.compile failed: %s",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            module.forward = eager
            return eager(*args, **kwargs)
        module.forward = compiled  # compiled from now on: no check per call
        return out

    module.forward = first_call
