"""CPU int8: W8A8 dynamic quantisation of the encoder's Linear layers, compiled.

What ``dtype: int8`` (``MODSERVE_DTYPE=int8``) runs on CPU, and what the accuracy gate
(``benchmarks/accuracy_gate.py``) and the export gate (``training/export.py``) measure:

* weights: int8, symmetric, one scale per output channel, quantised once at load;
* activations: int8, symmetric, one scale per token, computed on the fly
  (torchao ``Int8DynamicActivationInt8WeightConfig``);
* every ``nn.Linear`` inside the encoder; the classification head stays fp32.

Per-token activation scales are what make int8 usable for BERT-family encoders: the
[CLS]/[SEP] positions carry activations far larger than ordinary tokens, so one scale per
tensor (``torch.ao`` ``quantize_dynamic``) leaves ordinary tokens a handful of levels.
Measured on the default model (400 corpus texts): per-tensor moves a score by up to 0.84,
per-token by 0.09.

Eager torchao int8 is no faster than fp32 on CPU. ``torch.compile`` (inductor) fuses the
per-token quantisation and the dequantising epilogue around int8 GEMMs (VNNI/AMX via
oneDNN), which is where the speed comes from (~2x the fp32 HF forward at batch 32 x 64
tokens on 2 Xeon cores). It compiles once with dynamic batch and length, during the
engine's warm-up, before ``/ready`` turns true. Costs to know about:

* start-up: ~30-70 s of compilation on 2 cores (once per process);
* a C++ compiler (``g++``) must be present at run time (inductor's CPU backend);
* ``MODSERVE_INT8_COMPILE=0`` skips compilation: start-up in seconds, same scores,
  about fp32 speed. If compilation fails, the model falls back to eager with a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import nn

log = logging.getLogger(__name__)

COMPILE_ENV = "MODSERVE_INT8_COMPILE"


def compile_enabled() -> bool:
    """``MODSERVE_INT8_COMPILE`` (default true), parsed like ``Settings.int8_compile``."""
    value = os.environ.get(COMPILE_ENV, "").strip()
    return TypeAdapter(bool).validate_python(value) if value else True


def quantize_encoder_int8(encoder: nn.Module, compile_model: bool | None = None) -> nn.Module:
    """``encoder`` with W8A8 dynamic int8 Linear layers, compiled unless disabled.

    The module is modified in place (Linear weights replaced, ``forward`` compiled); pass a
    copy to keep a float32 reference. Returns the same module.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(
        encoder,
        Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda mod, _fqn: isinstance(mod, nn.Linear),
    )
    if compile_model is None:
        compile_model = compile_enabled()
    if compile_model:
        _compile_forward(encoder)
    return encoder


def _compile_forward(module: nn.Module) -> None:
    """Swap ``module.forward`` for a compiled one; fall back to eager if compiling fails.

    Compilation happens on the first call (the engine's warm-up), which decides: if it
    raises (no ``g++``, an inductor bug) a warning is logged and the eager forward is put
    back, so a host without a toolchain still serves, at about fp32 speed.
    """
    # torchao's Int8Tensor opts out of AOT-autograd's cache key; only costs a cache miss.
    warnings.filterwarnings("ignore", message="Int8Tensor does not implement _stable_hash")
    eager = module.forward
    compiled = torch.compile(eager, dynamic=True)

    def first_call(*args: Any, **kwargs: Any) -> Any:
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:
            log.warning("int8 encoder runs eager (about fp32 speed): torch.compile failed: %s",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            module.forward = eager
            return eager(*args, **kwargs)
        module.forward = compiled  # compiled from now on: no check per call
        return out

    module.forward = first_call
