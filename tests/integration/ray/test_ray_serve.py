"""modserve on Ray Serve: the same app over handles, and recovery when a replica dies.

Run alone with ``pytest -m ray``. One local Ray (2 CPUs) for the whole module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from tests.helpers import free_port  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.ray]
CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "serve_config.yaml"


def wait_until(fn, timeout_s: float, what: str):
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            out = fn()
            if out:
                return out
        except (httpx.HTTPError, openai.APIError):
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


base_grpc = [""]


@pytest.fixture(scope="module")
def ray_base(tiny_repo: Path) -> Iterator[str]:
    from serving.deployments import build_app

    port, grpc_port = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(
            {
                "model_repo": str(tiny_repo),
                "model": "tiny",
                "grpc_port": grpc_port,
                "ray": {"num_cpus_per_replica": 0.5},
            }
        ),
        name="modserve",
        blocking=False,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/ready", timeout=2).status_code == 200, 120, "ready")
    base_grpc[0] = f"127.0.0.1:{grpc_port}"
    yield base
    serve.shutdown()
    ray.shutdown()


def test_openai_client_through_ray(ray_base: str):
    client = openai.OpenAI(base_url=ray_base + "/v1", api_key="x", max_retries=0)
    resp = client.moderations.create(input=["hello", "another text"])
    assert resp.model == "tiny" and len(resp.results) == 2
    with pytest.raises(openai.NotFoundError):
        client.moderations.create(input="x", model="missing")


def test_kserve_grpc_through_ray_ingress(ray_base: str):
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(base_grpc[0])
    assert client.is_server_ready()
    text = grpcclient.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"hello", b"second"], dtype=object))
    out = client.infer("tiny", [text])
    scores = out.as_numpy("SCORES")
    assert scores.shape[0] == 2 and scores.dtype == np.float32
    http = httpx.post(ray_base + "/v1/moderations", json={"input": ["hello", "second"]}).json()
    first = http["results"][0]["category_scores"]
    assert sorted(first.values()) == pytest.approx(sorted(scores[0].tolist()), abs=1e-5)


def test_requests_recover_after_replica_is_killed(ray_base: str):
    client = openai.OpenAI(base_url=ray_base + "/v1", api_key="x", max_retries=0)
    before = client.moderations.create(input="steady text").results[0].category_scores
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "classifier-tiny" in a["name"]
    ]
    assert names, "no classifier replica actor found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    for _ in range(5):  # calls right after the kill: an answer or a clean retryable error
        r = httpx.post(ray_base + "/v1/moderations", json={"input": "during"}, timeout=30)
        assert r.status_code in (200, 503), r.text
    after = (
        wait_until(lambda: client.moderations.create(input="steady text"), 120, "replica restart")
        .results[0]
        .category_scores
    )
    assert after.model_dump() == pytest.approx(before.model_dump(), abs=1e-5)


def test_serve_config_parses_with_ray_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert schema.applications[0].import_path == "serving.deployments:build_app"
