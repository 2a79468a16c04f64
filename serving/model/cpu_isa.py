"""What this CPU can do: the ISA extensions that decide which CPU paths are fast or exact.

Read once from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm). Empty where that
file cannot be read: every check then answers as for the most basic CPU of its kind.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# The extensions that decide CPU kernels (recorded with every benchmark result).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Every ISA flag the kernel reports for this CPU (the first core's line)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_isa() -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has, in that order."""
    have = cpu_flags()
    return [f for f in ISA_FLAGS if f in have]


def has_vnni() -> bool:
    """x86 integer dot products straight into int32 (AVX512-VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def has_native_bf16() -> bool:
    """bfloat16 dot products in hardware: AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm.
    Without them oneDNN emulates bfloat16 (AVX-512) or has none (AVX2), slower than float32."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu_flags())
