"""MODSERVE_CPU_WORKERS / MODSERVE_CPU_THREADS: how the cores are shared out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from serving.config import Settings
from serving.model.cpu_layout import apply_cpu_layout


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "expect_workers", "expect_threads"),
    [
        ("4", 1, 0, 1, 4),  # one worker: every core on its batch
        ("4", 2, 0, 2, 2),  # an equal share each
        ("4", 8, 0, 4, 1),  # capped at the cores
        ("4", 2, 3, 2, 3),  # explicit threads per worker win
        ("1", 2, 0, 1, 1),  # a Ray replica with num_cpus=1 (Ray sets OMP_NUM_THREADS)
    ],
)
def test_workers_and_threads(
    monkeypatch: pytest.MonkeyPatch,
    cores: str,
    workers: int,
    threads: int,
    expect_workers: int,
    expect_threads: int,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", cores)
    settings = Settings(cpu_workers=workers, cpu_threads=threads)
    assert apply_cpu_layout(settings) == expect_workers
    assert torch.get_num_threads() == expect_threads


def test_without_omp_num_threads_the_usable_cpus_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    assert apply_cpu_layout(Settings(cpu_workers=2)) == 2
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize(
    ("setting", "device", "threads", "largest_bucket", "expect"),
    [
        (0, "cpu", 1, 256, 1024),  # auto on CPU: ~1024 tokens per thread of a worker
        (0, "cpu", 4, 256, 4096),
        (0, "cuda", 1, 256, 16384),  # auto on a GPU
        (0, "cpu", 1, 2048, 2048),  # auto always holds one sequence of the largest bucket
        (3000, "cpu", 2, 256, 3000),  # an explicit budget wins
        (100, "cpu", 1, 256, 100),  # ...as set: too small is the batcher's error, not hidden
    ],
)
def test_batch_token_budget_follows_the_device(
    setting: int, device: str, threads: int, largest_bucket: int, expect: int
) -> None:
    settings = Settings(max_batch_tokens=setting)
    assert settings.resolved_max_batch_tokens(device, threads, largest_bucket) == expect
