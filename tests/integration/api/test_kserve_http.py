"""KServe v2 / Triton HTTP routes on the main app, with the official tritonclient.http."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.helpers import ServerProcess, unloaded_app_client

pytestmark = pytest.mark.integration
TEXTS = ["hello there", "I will hurt you", "long text " * 80]


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_repo, MODSERVE_MAX_INPUTS_PER_REQUEST="8", MODSERVE_GRPC_PORT="0")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> th.InferenceServerClient:
    return th.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def openai_scores(server: ServerProcess) -> tuple[list[str], np.ndarray]:
    """(categories, (N, C) scores) for TEXTS from POST /v1/moderations."""
    r = httpx.post(server.base + "/v1/moderations", json={"input": TEXTS}).json()
    cats = list(r["results"][0]["category_scores"])
    return cats, np.array([[res["category_scores"][c] for c in cats] for res in r["results"]])


def text_input(texts: list[str], binary: bool) -> th.InferInput:
    inp = th.InferInput("TEXT", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return inp


def test_health_and_metadata(client: th.InferenceServerClient, openai_scores):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert client.get_server_metadata()["name"] == "modserve"
    cats, _ = openai_scores
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "SCORES", "datatype": "FP32", "shape": [-1, len(cats)]},
        {"name": "FLAGS", "datatype": "BOOL", "shape": [-1, len(cats)]},
    ]
    assert meta["parameters"]["categories"] == cats
    config = client.get_model_config("tiny")
    assert json.loads(config["parameters"]["categories"]["string_value"]) == cats


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_openai_route(client: th.InferenceServerClient, openai_scores, binary: bool):
    cats, expected = openai_scores
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("SCORES", "FLAGS")]
    r = client.infer("tiny", [text_input(TEXTS, binary)], outputs=outputs)
    scores, flags = r.as_numpy("SCORES"), r.as_numpy("FLAGS")
    assert scores.dtype == np.float32 and scores.shape == (len(TEXTS), len(cats))
    assert flags.dtype == np.bool_ and flags.shape == (len(TEXTS), len(cats))
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_statistics_and_repository_index_with_tritonclient(client: th.InferenceServerClient):
    """tritonclient's get_inference_statistics / get_model_repository_index: counters that
    move with the requests served, every model READY."""
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    client.infer("tiny", [text_input(TEXTS[:2], True)])
    after = client.get_inference_statistics("tiny", "1")["model_stats"][0]
    assert after["name"] == "tiny" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 2
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"]
    every = client.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == ["tiny"]
    assert client.get_model_repository_index() == [
        {"name": "tiny", "version": "1", "state": "READY"}
    ]
    with pytest.raises(InferenceServerException, match="nope"):
        client.get_inference_statistics("nope")


def test_plain_json_request_and_output_subset(server: ServerProcess, openai_scores):
    body = {
        "id": "req-7",
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [TEXTS[1]]}],
        "outputs": [{"name": "SCORES"}],
    }
    r = httpx.post(server.base + "/v2/models/tiny/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["model_name"] == "tiny"
    [scores] = out["outputs"]
    assert scores["name"] == "SCORES" and scores["shape"] == [1, len(openai_scores[0])]
    np.testing.assert_allclose(scores["data"], openai_scores[1][1], atol=1e-5, rtol=0)


def _body(**text) -> dict:
    return {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"], **text}]}


@pytest.mark.parametrize(
    "body",
    [
        _body(datatype="FP32", data=[1.0]),  # wrong datatype
        _body(shape=[1, 1]),  # wrong shape
        _body(shape=[2]),  # shape disagrees with data
        _body(name="INPUT0"),  # missing TEXT
        _body(shape=[0], data=[]),  # empty batch
        _body(data=[3]),  # not a string
        {"inputs": "TEXT"},  # not a tensor list
        {**_body(), "outputs": [{"name": "LOGITS"}]},  # unknown output
    ],
    ids=["datatype", "shape", "count", "missing", "empty", "non-string", "inputs", "output"],
)
def test_malformed_requests_are_400(server: ServerProcess, body: dict):
    r = httpx.post(server.base + "/v2/models/tiny/infer", json=body)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)


def test_undecodable_and_truncated_binary_are_400(server: ServerProcess):
    for raw in (struct.pack("<I", 2) + b"\xff\xfe", struct.pack("<I", 9) + b"abc"):
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "TEXT",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        r = httpx.post(
            server.base + "/v2/models/tiny/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert r.status_code == 400, r.text
        assert isinstance(r.json()["error"], str)
    r = httpx.post(server.base + "/v2/models/tiny/infer", content=b"{not json")
    assert r.status_code == 400


def test_unknown_model_and_version_are_404(client: th.InferenceServerClient, server):
    for path in ("/v2/models/nope", "/v2/models/nope/infer", "/v2/models/tiny/versions/9/ready"):
        method = httpx.post if path.endswith("infer") else httpx.get
        r = method(server.base + path, **({"json": _body()} if method is httpx.post else {}))
        assert r.status_code == 404 and "error" in r.json(), path
    with pytest.raises(InferenceServerException):
        client.infer("nope", [text_input(["x"], True)])


async def test_kserve_not_ready_is_503(tiny_repo: Path):
    async with unloaded_app_client(tiny_repo) as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert isinstance(r.json()["error"], str)
        r = await c.post("/v2/models/tiny/infer", json=_body())
        assert r.status_code == 503 and isinstance(r.json()["error"], str)
