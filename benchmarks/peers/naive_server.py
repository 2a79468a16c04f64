"""Peer (a): the naive server. FastAPI + the HF model called per input at batch 1.

``python -m benchmarks.peers.naive_server --model-dir DIR --port PORT``. The handler runs the
forward passes inline (one at a time, no batching, no padding); ``/stats`` exposes the token
counters the benchmark reads (padding ratio is 1.0 by construction).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

from benchmarks.peers.common import PeerModel, texts_of


def create_app(model_dir: Path) -> FastAPI:
    app = FastAPI(title="naive peer")
    model = PeerModel(model_dir)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> dict[str, Any]:
        texts = texts_of(await request.json())
        rows = np.concatenate([model.scores([t]) for t in texts])  # batch 1, one by one
        return model.response(texts, rows)

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return dict(model.stats)

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, default=8100)
    a = p.parse_args()
    uvicorn.run(
        create_app(a.model_dir),
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
