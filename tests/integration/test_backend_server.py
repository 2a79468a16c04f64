"""The server picks its backend by timing the candidates at start, says which in /v1/models
and /metrics, and the ONNX Runtime backend answers with the scores torch computes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.model.load import load_model
from tests.helpers import ServerProcess
from training.evaluate import score_served

pytest.importorskip("onnxruntime")

TEXTS = ["hello there", "I will find you and hurt you badly", "a longer text " * 40]


def test_auto_backend_is_timed_and_reported(tiny_repo: Path) -> None:
    s = ServerProcess(tiny_repo, MODSERVE_BACKEND_PROBE_S="0.3")
    s.wait_ready()
    try:
        (entry,) = [m for m in httpx.get(s.base + "/v1/models").json()["data"] if m["id"] == "tiny"]
        rt = entry["runtime"]
        rates = {(p["backend"], p["dtype"]): p["tokens_per_s"] for p in rt["probes"]}
        assert set(rates) == {("torch", "float32"), ("onnxruntime", "float32")}
        assert all(r and r > 0 for r in rates.values()), rates
        assert (rt["backend"], rt["dtype"]) == max(rates, key=lambda c: rates[c])
        metrics = httpx.get(s.base + "/metrics").text
        assert (
            f'modserve_model_backend_info{{backend="{rt["backend"]}",dtype="float32",'
            f'model="tiny"}} 1.0'
        ) in metrics
        assert "modserve_backend_probe_tokens_per_second{" in metrics
    finally:
        s.stop()


def test_onnxruntime_server_answers_torch_scores(tiny_repo: Path) -> None:
    loaded = load_model(tiny_repo / "tiny", "cpu", "float32")
    want = score_served(loaded, TEXTS)
    s = ServerProcess(tiny_repo, MODSERVE_BACKEND="onnxruntime", MODSERVE_DTYPE="float32")
    s.wait_ready()
    try:
        r = httpx.post(s.base + "/v1/moderations", json={"input": TEXTS, "model": "tiny"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        names = loaded.cfg.served_categories
        got = np.array([[res["category_scores"][c] for c in names] for res in results])
        np.testing.assert_allclose(got, want, atol=1e-4)
        (entry,) = [m for m in httpx.get(s.base + "/v1/models").json()["data"] if m["id"] == "tiny"]
        assert (entry["runtime"]["backend"], entry["runtime"]["dtype"]) == (
            "onnxruntime", "float32",
        )  # fmt: skip
    finally:
        s.stop()
