"""The model core alone on a server's batch composition: the denominator of #5's 85 % rule.

``isolated_core_seconds(model_dir, dtype, per_bucket)`` loads the model in this process
(the server must be stopped: the cores must be idle) and times, for every bucket length
the server ran, forwards at that bucket's mean batch size (random token ids, full
length: padding costs the same as real tokens), then multiplies by the number of batches
of that bucket. The core runs in the server's CPU layout (``apply_cpu_layout``:
``MODSERVE_CPU_WORKERS`` threads, each running its own forwards with its share of the
cores), so the serving layer is compared with the fastest the same core does alone.
``server real tokens/s ÷ (real tokens / isolated core seconds)`` =
``isolated core seconds ÷ wall seconds`` is the server's throughput as a fraction of the
model core's on the same batches: 1.0 = the serving layer (HTTP, JSON, tokenisation,
batching, and the CPU they take from the core) costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.model_core import time_fn

MIN_TIME_S = 1.0  # timed per bucket; more = less noise (0.3 s read 0.8-1.2 run to run)


def isolated_core_seconds(
    model_dir: Path,
    dtype: str,
    per_bucket: dict[Any, list[float]],
    min_time_s: float = MIN_TIME_S,
    backend: str = "torch",
    length_factor: float = 1.0,
) -> dict[str, Any]:
    """{"core_seconds": total, "workers": n, "buckets": [{bucket, batches, batch_size,
    ms_per_batch}]}; ``ms_per_batch`` is wall time per batch with every worker busy.
    ``backend`` + ``dtype``: what the server chose (its /v1/models ``runtime``).
    ``length_factor``: the server pads a batch to its longest sequence, not to the bucket
    (``serving.engine.batcher.Batch.length``); its counters give the padded tokens in all
    but not per bucket, so each bucket is timed at ``bucket x length_factor`` tokens
    (padded tokens / sum of bucket x sequences), the same shrink for every bucket."""
    from serving.config import Settings
    from serving.model.cpu_layout import apply_cpu_layout
    from serving.model.load import load_model

    workers = apply_cpu_layout(Settings())  # before the model: int8 compiles for this layout
    loaded = load_model(model_dir, "cpu", dtype, backend=backend)
    vocab = int(loaded.tokenizer.vocab_size)
    gen = torch.Generator().manual_seed(0)
    total, rows = 0.0, []
    for bucket, (batches, sequences) in sorted((int(b), v) for b, v in per_bucket.items()):
        size = max(1, round(sequences / batches))
        length = max(1, min(bucket, round(bucket * length_factor)))
        ids = torch.randint(1000, vocab, (size, length), generator=gen)
        mask = torch.ones(size, length, dtype=torch.long)

        def forward(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> object:
            with torch.inference_mode():
                return loaded.model(ids, mask).cpu()

        forward()  # int8: compiles here, outside the timing
        seconds = seconds_per_batch(forward, workers, min_time_s)
        total += batches * seconds
        rows.append(
            {
                "bucket": bucket,
                "length": length,
                "batches": int(batches),
                "batch_size": size,
                "ms_per_batch": round(seconds * 1e3, 2),
            }
        )
    return {"core_seconds": round(total, 3), "workers": workers, "buckets": rows}


def seconds_per_batch(forward: Callable[[], object], workers: int, min_time_s: float) -> float:
    """Wall seconds per forward when ``workers`` threads each run forwards back to back."""
    _, one = time_fn(forward, "cpu", min_time_s / 4)
    if workers == 1:
        return one
    per_worker = max(2, round(min_time_s / one))
    return wall_seconds_on_threads(forward, workers, per_worker) / (per_worker * workers)


def wall_seconds_on_threads(forward: Callable[[], object], workers: int, per_worker: int) -> float:
    """Wall seconds for ``workers`` threads each calling ``forward`` ``per_worker`` times,
    as the engine's core threads do."""

    def work() -> None:
        for _ in range(per_worker):
            forward()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0
