"""The model core alone on a server's batch composition: the denominator of #5's 85 % rule.

``isolated_core_seconds(model_dir, dtype, per_bucket)`` loads the model in this process
(the server must be stopped: the cores must be idle) and times, for every bucket length
the server ran, one forward at that bucket's mean batch size (random token ids, full
length: padding costs the same as real tokens), then multiplies by the number of batches
of that bucket. ``server real tokens/s ÷ (real tokens / isolated core seconds)`` =
``isolated core seconds ÷ wall seconds`` is the server's throughput as a fraction of the
model core's on the same batches: 1.0 = the serving layer (HTTP, JSON, tokenisation,
batching, and the CPU they take from the core) costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.model_core import time_fn

MIN_TIME_S = 0.3  # timed per bucket; more = less noise


def isolated_core_seconds(
    model_dir: Path, dtype: str, per_bucket: dict[Any, list[float]], min_time_s: float = MIN_TIME_S
) -> dict[str, Any]:
    """{"core_seconds": total, "buckets": [{bucket, batches, batch_size, ms_per_batch}]}."""
    from serving.model import load_model

    loaded = load_model(model_dir, "cpu", dtype)
    vocab = int(loaded.model.encoder.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    total, rows = 0.0, []
    for bucket, (batches, sequences) in sorted((int(b), v) for b, v in per_bucket.items()):
        size = max(1, round(sequences / batches))
        ids = torch.randint(1000, vocab, (size, bucket), generator=gen)
        mask = torch.ones(size, bucket, dtype=torch.long)

        def forward(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> object:
            with torch.inference_mode():
                return loaded.model(ids, mask).cpu()

        forward()  # int8: compiles here, outside the timing
        _, seconds = time_fn(forward, "cpu", min_time_s)
        total += batches * seconds
        rows.append({"bucket": bucket, "batches": int(batches), "batch_size": size,
                     "ms_per_batch": round(seconds * 1e3, 2)})
    return {"core_seconds": round(total, 3), "buckets": rows}
