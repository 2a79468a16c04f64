"""How a CPU's cores are shared out: core threads (workers) x torch threads per worker."""

from __future__ import annotations

import os

import torch

from serving.config import Settings


def apply_cpu_layout(settings: Settings) -> int:
    """Set torch's threads for CPU models; return how many core threads (workers) to run.

    Call before any model is built or compiled: compiled int8 kernels keep the thread count
    they were compiled with. The cores are ``OMP_NUM_THREADS`` if set (Ray sets it to a
    replica's ``num_cpus``), else the CPUs this process may run on. Workers are capped at
    the cores; each gets ``MODSERVE_CPU_THREADS`` threads, or an equal share of the cores.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    cores = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    workers = max(1, min(settings.cpu_workers, cores))
    torch.set_num_threads(settings.cpu_threads or max(1, cores // workers))
    return workers
