"""Servers for the reliability suite: a tiny-model server with tight connection limits (fast
to start, hostile input is model-independent) and the shipped default model (real costs for
starvation and overload)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "modserve-moderation-minilm"

# Tight limits so that each one is reached in well under a second of test time.
HOSTILE_ENV = {
    "MODSERVE_HTTP_HEADER_TIMEOUT_S": "1.5",
    "MODSERVE_HTTP_BODY_TIMEOUT_S": "2.0",
    "MODSERVE_HTTP_MAX_CONNECTIONS": "64",
    "MODSERVE_LOG_LEVEL": "info",
}


@pytest.fixture(scope="module")
def hostile(tiny_repo: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_repo, **HOSTILE_ENV)
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def default_model_server() -> Iterator[ServerProcess]:
    if not (REPO_ROOT / "model_repo" / DEFAULT_MODEL / "config.yaml").is_file():
        pytest.skip("the shipped default model is not in model_repo/")
    s = ServerProcess(
        REPO_ROOT / "model_repo",
        model=DEFAULT_MODEL,
        MODSERVE_CPU_THREADS="0",
        MODSERVE_LOG_LEVEL="warning",
        MODSERVE_CACHE_BYTES="0",  # load tests measure the model path, not repeats
    )
    s.wait_ready(timeout_s=180)
    yield s
    s.stop()


def still_serving(server: ServerProcess, within_s: float = 2.0) -> None:
    """A normal request right after: 200, within ``within_s``."""
    r = httpx.post(
        server.base + "/v1/moderations", json={"input": "a normal request"}, timeout=within_s
    )
    assert r.status_code == 200, r.text
