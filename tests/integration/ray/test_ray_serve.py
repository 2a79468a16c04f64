"""modserve on Ray Serve: the same app over handles, and recovery when a replica dies.

Run alone with ``pytest -m ray``. One local Ray (2 CPUs) for the whole module.
"""

from __future__ import annotations

import threading
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
    # The node advertises the ingress resource, as the chart's head does: the ingress (and
    # with it gRPC) must be placed by it, with no CPU of its own.
    ray.init(
        num_cpus=2,
        resources={"modserve_ingress": 1000},
        include_dashboard=False,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(
            {
                "model_repo": str(tiny_repo),
                "model": "tiny",
                "grpc_port": grpc_port,
                # two classifier replicas: a crash of one must cost (almost) no request
                "ray": {
                    "num_cpus_per_replica": 0.5,
                    "min_replicas": 2,
                    "max_replicas": 2,
                    "ingress_resource": "modserve_ingress",
                },
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


RECOVERY_BOUND_S = 25.0


def running_replicas(deployment: str) -> int:
    app = serve.status().applications["modserve"]
    states = app.deployments[deployment].replica_states
    return int(sum(n for state, n in states.items() if str(state).endswith("RUNNING")))


def test_killing_a_replica_under_load_loses_almost_nothing(ray_base: str):
    """Chaos (issue #15): steady load from 4 clients, one of the two classifier replicas is
    killed; < 1 % of requests may fail (a request whose replica dies is retried on the
    other) and the replica is back, warm, within the recovery bound. Target 15 s, measured
    13.5-14.1 s on 2 busy cores (most of it the new replica's imports and warm-up); the
    assertion leaves CI machines 25 s."""
    client = openai.OpenAI(base_url=ray_base + "/v1", api_key="x", max_retries=0)
    before = client.moderations.create(input="steady text").results[0].category_scores
    wait_until(lambda: running_replicas("classifier-tiny") == 2, 120, "two replicas")
    outcomes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(ray_base + "/v1/moderations", json={"input": "steady text"})
                    outcomes.append(r.status_code)
                except httpx.HTTPError:
                    outcomes.append(0)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        time.sleep(3)
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "classifier-tiny" in a["name"]
        ]
        assert len(names) == 2, names
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        time.sleep(1)
        wait_until(lambda: running_replicas("classifier-tiny") == 2, 60, "replica replaced")
        recovery_s = time.monotonic() - killed_at
        time.sleep(2)
    finally:
        stop.set()
        for t in clients:
            t.join()
    failed = sum(code != 200 for code in outcomes)
    print(f"chaos: {len(outcomes)} requests, {failed} failed, recovery {recovery_s:.1f} s")
    assert len(outcomes) > 50 and failed / len(outcomes) < 0.01, (failed, len(outcomes))
    assert recovery_s < RECOVERY_BOUND_S
    after = client.moderations.create(input="steady text").results[0].category_scores
    assert after.model_dump() == pytest.approx(before.model_dump(), abs=1e-5)


def test_serve_config_parses_with_ray_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert schema.applications[0].import_path == "serving.deployments:build_app"
