"""Which backend and precision serve a model on this machine: measured at start, not guessed.

CPUs differ more than their names say: the int8 GEMM that doubles throughput on a CPU with
AVX-512 VNNI is 30x slower than float32 on an AVX2-only one (``torch._int_mm`` falls back
to scalar code there), and ONNX Runtime beats torch by 1.2-1.6x on some CPUs and not on
others. So on CPU, with ``MODSERVE_BACKEND=auto`` and/or ``MODSERVE_DTYPE=auto``, the server
loads every candidate the model's accuracy gate allows, times each on the same
representative batch (32 x 64 tokens, best of 3 interleaved rounds, about
``MODSERVE_BACKEND_PROBE_S`` seconds each), serves the fastest, and logs the table.

Candidates (CPU): torch float32 (the reference, always); ONNX Runtime float32 (if
``onnxruntime`` is installed); ONNX Runtime int8 (if the model's ``onnx_int8_ok``); torch
bfloat16 (if the model's ``bf16_ok`` and the CPU has AVX512-BF16 or AMX-BF16:
``serving.model.bf16_cpu``); torch int8 only when asked for by name
(``MODSERVE_DTYPE=int8``: its compiled kernels take 40-110 s to build, too slow for an
automatic start). An explicit choice that turns out slower than
torch float32 on this CPU still serves, with a warning that names the measured ratio.

CUDA: torch only (float16 by default), no probe. ``MODSERVE_BACKEND_PROBE_S=0`` skips
timing: ``auto`` then means torch float32 on CPU.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from serving.config import Settings
from serving.model.cpu_isa import has_native_bf16
from serving.model.load import LoadedModel, load_model
from serving.model.onnx_export import SATURATION
from serving.model.onnx_runtime import available as onnxruntime_available
from serving.model.onnx_runtime import exact_u8s8_gemm
from serving.model.repo_config import ModelConfig, load_model_config

log = logging.getLogger(__name__)

PROBE_SHAPE = (32, 64)  # (sequences, tokens): a full batch of a mid-sized bucket
PROBE_ROUNDS = 3
REFERENCE = ("torch", "float32")


@dataclass
class Probe:
    backend: str
    dtype: str
    tokens_per_s: float | None = None  # None: not timed (failed or the only candidate)
    error: str | None = None


@dataclass
class Choice:
    """What serves the model and why: ``probes`` in the order tried, the chosen first."""

    backend: str
    dtype: str
    reason: str
    probes: list[Probe] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "dtype": self.dtype,
            "reason": self.reason,
            "probes": [asdict(p) for p in self.probes],
        }


def _explicit(settings: Settings) -> bool:
    """Both backend and dtype named: serve that, timed only to warn if slower."""
    return settings.backend != "auto" and settings.dtype != "auto"


def candidates(model_dir: Path, settings: Settings) -> list[tuple[str, str]]:
    """(backend, dtype) pairs this model may be served as on CPU, the reference first."""
    cfg = load_model_config(model_dir)
    backends = ["torch", "onnxruntime"] if settings.backend == "auto" else [settings.backend]
    if "onnxruntime" in backends and not onnxruntime_available():
        if settings.backend == "onnxruntime":
            raise ValueError("MODSERVE_BACKEND=onnxruntime but onnxruntime is not installed")
        backends.remove("onnxruntime")
    dtypes = ["float32", "int8", "bfloat16"] if settings.dtype == "auto" else [settings.dtype]
    explicit = _explicit(settings)
    out = []
    for b in backends:
        for d in dtypes:
            if explicit or d == "float32" or _gated_here(cfg, settings, b, d):
                out.append((b, d))  # by name: load_model says if it cannot be
    if not out:
        raise ValueError(
            f"MODSERVE_DTYPE={settings.dtype}: model {cfg.name!r} has no {settings.dtype} "
            "path that passed its accuracy gate and is fast and exact on this CPU (see "
            "config.yaml int8_ok / onnx_int8_ok / bf16_ok; bfloat16 is offered on CPUs with "
            "AVX512-BF16 or AMX-BF16)"
        )
    return sorted(out, key=lambda c: c != REFERENCE)


def _gated_here(cfg: ModelConfig, settings: Settings, backend: str, dtype: str) -> bool:
    """A faster path this model passed its gate in and this CPU runs fast and exactly."""
    if (backend, dtype) == ("onnxruntime", "int8"):
        return _onnx_int8_usable(cfg)
    if (backend, dtype) == ("torch", "bfloat16"):
        return _bf16_usable(cfg)
    # torch int8's compiled kernels take 40-110 s to build: offered only when named
    return (backend, dtype) == ("torch", "int8") and settings.dtype == "int8" and cfg.int8_ok


def _bf16_usable(cfg: ModelConfig) -> bool:
    """The model passed its bfloat16 gate and this CPU multiplies bfloat16 in hardware
    (elsewhere oneDNN emulates it, slower than float32: not worth a probe)."""
    if not cfg.bf16_ok or cfg.architecture == "hf":
        return False
    if not has_native_bf16():
        log.info("%s: bfloat16 skipped: this CPU has no AVX512-BF16 / AMX-BF16", cfg.name)
        return False
    return True


def _onnx_int8_usable(cfg: ModelConfig) -> bool:
    """The model's ONNX int8 graph passed its gate and is exact on this CPU."""
    if not cfg.onnx_int8_ok or cfg.architecture == "hf":
        return False
    if cfg.onnx_int8_weight_bits == 8 and not exact_u8s8_gemm():
        log.info("%s: ONNX Runtime int8 skipped: its 8-bit weights are exact only on CPUs "
                 "with VNNI (%s)", cfg.name, SATURATION)  # fmt: skip
        return False
    return True


def tokens_per_s(loaded: LoadedModel, seconds: float) -> float:
    """Real tokens/s of ``loaded.model`` on random full-length batches of ``PROBE_SHAPE``."""
    n, t = PROBE_SHAPE
    vocab = max(1100, int(getattr(loaded.tokenizer, "vocab_size", 30522)))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (n, t), generator=gen)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        loaded.model(ids, mask)  # first call: allocation, graph set-up
        t0, k = time.perf_counter(), 0
        while k == 0 or time.perf_counter() - t0 < seconds:
            loaded.model(ids, mask)
            k += 1
    return n * t * k / (time.perf_counter() - t0)


def _load(
    model_dir: Path, settings: Settings, device: str, backend: str, dtype: str
) -> LoadedModel:
    return load_model(
        model_dir,
        device,
        dtype,
        settings.int8_compile,
        settings.head_kernel,
        backend=backend,
    )


def _probe(
    model_dir: Path,
    settings: Settings,
    options: list[tuple[str, str]],
    wanted: tuple[str, str] | None,
) -> tuple[dict[tuple[str, str], LoadedModel], dict[tuple[str, str], Probe]]:
    """Load every option (one that fails is recorded, unless it is ``wanted``) and time them
    in ``PROBE_ROUNDS`` interleaved rounds, best round kept."""
    loaded_by: dict[tuple[str, str], LoadedModel] = {}
    probes = {c: Probe(*c) for c in options}
    for c in options:
        try:
            loaded_by[c] = _load(model_dir, settings, "cpu", *c)
        except Exception as e:  # one candidate failing must not stop the server
            if c == wanted:
                raise
            probes[c].error = f"{type(e).__name__}: {e}"[:300]
            log.warning("backend %s/%s unavailable for %s: %s", *c, model_dir.name, e)
    per_round = settings.backend_probe_s / PROBE_ROUNDS
    for _ in range(PROBE_ROUNDS):
        for c, lm in loaded_by.items():
            measured = tokens_per_s(lm, per_round)
            probes[c].tokens_per_s = max(probes[c].tokens_per_s or 0.0, measured)
    if not loaded_by:
        raise ValueError(f"no backend could load {model_dir.name}: " + "; ".join(
            f"{p.backend}/{p.dtype}: {p.error}" for p in probes.values()))  # fmt: skip
    return loaded_by, probes


def _versus_reference(wanted: tuple[str, str], probes: dict[tuple[str, str], Probe]) -> str:
    """The reason for serving an explicit choice; warns loudly if it is slower than torch
    float32 on this CPU."""
    ref_rate, rate = probes[REFERENCE].tokens_per_s, probes[wanted].tokens_per_s
    if not (ref_rate and rate and rate < ref_rate):
        return "as configured"
    log.warning(
        "SLOWER THAN FLOAT32: %s/%s runs at %.2fx the speed of torch float32 on this CPU "
        "(%.0f vs %.0f tokens/s at %dx%d). Unset MODSERVE_BACKEND/MODSERVE_DTYPE (auto) to "
        "serve the fastest gated path.",
        *wanted, rate / ref_rate, rate, ref_rate, *PROBE_SHAPE,
    )  # fmt: skip
    return f"as configured; {rate / ref_rate:.2f}x torch float32 here"


def choose_and_load(model_dir: Path, settings: Settings, device: str) -> tuple[LoadedModel, Choice]:
    """Load ``model_dir`` on ``device`` as the fastest gated (backend, dtype), see module doc."""
    if device != "cpu":
        if settings.backend == "onnxruntime":
            raise ValueError("MODSERVE_BACKEND=onnxruntime runs on CPU; use torch on CUDA")
        loaded = _load(model_dir, settings, device, "torch", settings.dtype)
        return loaded, Choice("torch", loaded.dtype, f"{device}: torch")
    options = candidates(model_dir, settings)
    wanted = options[0] if _explicit(settings) or len(options) == 1 else None
    if settings.backend_probe_s <= 0 or (wanted == REFERENCE and len(options) == 1):
        only = wanted or options[0]  # the reference when it is a candidate
        loaded = _load(model_dir, settings, device, *only)
        return loaded, Choice(*only, "as configured, not timed", [Probe(*only)])
    if wanted is not None and wanted != REFERENCE:
        options = [REFERENCE, wanted]  # timed against float32 torch, to warn if slower
    loaded_by, probes = _probe(model_dir, settings, options, wanted)
    if wanted is not None:
        pick, reason = wanted, _versus_reference(wanted, probes)
    else:
        pick = max(loaded_by, key=lambda c: probes[c].tokens_per_s or 0.0)
        reason = "fastest here"
    model = loaded_by.pop(pick)
    loaded_by.clear()
    gc.collect()
    table = "; ".join(
        f"{p.backend}/{p.dtype} "
        + (f"{p.tokens_per_s:,.0f} tok/s" if p.tokens_per_s else f"unavailable ({p.error})")
        for p in probes.values()
    )
    log.info("%s: serving %s/%s (%s). Measured at %dx%d: %s",
             model_dir.name, *pick, reason, *PROBE_SHAPE, table)  # fmt: skip
    ordered = [probes[pick]] + [p for c, p in probes.items() if c != pick]
    return model, Choice(*pick, reason, ordered)
