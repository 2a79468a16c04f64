"""Peer (b): Ray Serve ``@serve.batch`` around the same model, as the Ray docs suggest.

Request-count batching: up to ``max_batch_size`` inputs or ``batch_wait_timeout_s``, padded
to the longest input of the batch (no length awareness); long inputs truncated to the model
window. One replica with the FastAPI ingress; ``/stats`` exposes the padding counters.
Started by ``benchmarks.peers.ray_runner`` (``--app ray-batch``). No ``from __future__ import
annotations`` here: Serve's class-based FastAPI ingress must see the real ``Request`` type.
"""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from ray import serve

from benchmarks.peers.common import PeerModel, texts_of

MAX_BATCH_SIZE = 32  # inputs per forward; Ray's example values are 8-32
BATCH_WAIT_TIMEOUT_S = 0.005  # how long a partial batch waits (Ray's default is 0.01)
MAX_ONGOING_REQUESTS = 256  # must exceed MAX_BATCH_SIZE or Ray caps the batch (default 5)

fastapi_app = FastAPI(title="ray @serve.batch peer")


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
@serve.ingress(fastapi_app)
class RayBatchPeer:
    def __init__(
        self,
        model_dir: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_TIMEOUT_S,
    ) -> None:
        self.model = PeerModel(Path(model_dir))
        self.classify_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]  # not in Ray Serve's type hints
        self.classify_batch.set_batch_wait_timeout_s(  # type: ignore[attr-defined]  # not in Ray Serve's type hints
            batch_wait_timeout_s
        )

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def classify_batch(self, texts: list[str]) -> list[np.ndarray]:
        rows = await asyncio.to_thread(self.model.scores, texts)
        return list(rows)

    @fastapi_app.post("/v1/moderations")
    async def moderations(self, request: Request) -> dict[str, Any]:
        texts = texts_of(await request.json())
        rows = await asyncio.gather(*(self.classify_batch(t) for t in texts))
        return self.model.response(texts, np.stack(rows))

    @fastapi_app.get("/ready")
    async def ready(self) -> dict[str, str]:
        return {"status": "ready"}

    @fastapi_app.get("/stats")
    async def stats(self) -> dict[str, int]:
        return dict(self.model.stats)


def build(model_dir: Path) -> Any:
    return RayBatchPeer.bind(str(model_dir))  # type: ignore[attr-defined]  # not in Ray Serve's type hints
