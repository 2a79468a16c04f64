"""Real HTTP against a running ``modserve serve`` process, with the official openai client."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serving.categories import CORE_WIRE_NAMES
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(
        tiny_repo,
        MODSERVE_API_KEYS=KEY,
        MODSERVE_MAX_INPUTS_PER_REQUEST="8",
        MODSERVE_MAX_INPUT_CHARS="3000",
        MODSERVE_MAX_INPUT_TOKENS="400",
        MODSERVE_MAX_REQUEST_BODY_BYTES="20000",
    )
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)


def assert_result_complete(result) -> None:
    cats = result.categories.model_dump(by_alias=True)
    scores = result.category_scores.model_dump(by_alias=True)
    applied = result.category_applied_input_types.model_dump(by_alias=True)
    for wire in CORE_WIRE_NAMES:
        assert isinstance(cats[wire], bool), wire
        assert isinstance(scores[wire], float) and 0.0 <= scores[wire] <= 1.0, wire
        assert applied[wire] == ["text"], wire
    assert result.flagged == any(cats[w] for w in CORE_WIRE_NAMES)


def test_openai_client_string_input(client: openai.OpenAI):
    resp = client.moderations.create(input="I love this recipe", model="omni-moderation-latest")
    assert resp.id.startswith("modr-")
    assert resp.model == "omni-moderation-latest"  # what OpenAI echoes for the alias
    assert len(resp.results) == 1
    assert_result_complete(resp.results[0])


def test_every_openai_category_is_answered(server: ServerProcess):
    """OpenAI answers 13 categories and its SDK requires them (``model_validate`` is
    strict). The tiny model scores all 13 (``DEFAULT_LABELS`` has the illicit heads): no
    unscored categories to name (``tests/unit/protocol/test_openai_taxonomy.py`` covers a
    model without them)."""
    from openai.types import ModerationCreateResponse

    from serving.categories import WIRE_NAMES

    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(server.base + "/v1/moderations", json={"input": ["a", "b"]}, headers=auth)
    body = r.json()
    parsed = ModerationCreateResponse.model_validate(body)  # raises on a missing category
    assert parsed.model == "tiny"  # no alias asked: the served model's own name
    assert "x-unscored-categories" not in r.headers
    for result in body["results"]:
        assert list(result["category_scores"]) == list(WIRE_NAMES)
        assert "unscored_categories" not in result
    models = httpx.get(server.base + "/v1/models", headers=auth).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id["tiny"]["unscored_categories"] == []
    assert by_id["omni-moderation-latest"]["categories"] == list(WIRE_NAMES)


@pytest.mark.parametrize(
    ("alias", "echoed"),
    [
        ("omni-moderation-2024-09-26", "omni-moderation-2024-09-26"),
        ("text-moderation-latest", "text-moderation-007"),
        ("text-moderation-stable", "text-moderation-007"),
    ],
)
def test_model_field_echoes_what_openai_echoes(client: openai.OpenAI, alias: str, echoed: str):
    assert client.moderations.create(input="x", model=alias).model == echoed


def test_openai_client_list_input(client: openai.OpenAI):
    resp = client.moderations.create(input=["one", "two", "three " * 200])
    assert len(resp.results) == 3
    for r in resp.results:
        assert_result_complete(r)


def test_openai_client_content_parts(client: openai.OpenAI):
    resp = client.moderations.create(
        model="text-moderation-stable",
        input=[{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}],
    )
    assert len(resp.results) == 2
    for r in resp.results:
        assert_result_complete(r)


def test_child_flag_implies_parent(client: openai.OpenAI):
    resp = client.moderations.create(input=["some text", "blood on the floor"])
    for r in resp.results:
        cats = r.categories.model_dump(by_alias=True)
        scores = r.category_scores.model_dump(by_alias=True)
        for child, parent in (
            ("hate/threatening", "hate"),
            ("violence/graphic", "violence"),
            ("self-harm/intent", "self-harm"),
        ):
            assert scores[child] <= scores[parent]
            if cats[child]:
                assert cats[parent]


def test_alias_route_and_timing_headers(server: ServerProcess):
    r = httpx.post(server.base + "/api/llm/moderations", json={"input": "hi"}, headers=AUTH)
    assert r.status_code == 200
    for h in ("x-compute-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
        assert float(r.headers[h]) >= 0.0
    assert int(r.headers["x-compute-tokens"]) == 3  # [CLS] hi [SEP]


def test_a_repeated_text_is_answered_from_the_cache(server: ServerProcess, client: openai.OpenAI):
    text = "a text this module sends twice, 7f3a"
    first = client.moderations.with_raw_response.create(input=text)
    again = client.moderations.with_raw_response.create(input=text.upper())  # uncased model
    assert first.headers["x-cached-inputs"] == "0" and int(first.headers["x-compute-tokens"]) > 0
    assert again.headers["x-cached-inputs"] == "1" and again.headers["x-compute-tokens"] == "0"
    a, b = first.parse().results[0], again.parse().results[0]
    assert a.category_scores == b.category_scores and a.categories == b.categories
    metrics = httpx.get(server.base + "/metrics").text
    assert 'modserve_cache_lookups_total{model="tiny",result="hit"}' in metrics


def test_models_health_ready_metrics_docs(server: ServerProcess, client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert "tiny" in ids and "omni-moderation-latest" in ids
    assert httpx.get(server.base + "/health").json() == {"status": "ok"}
    assert httpx.get(server.base + "/ready").status_code == 200
    client.moderations.create(input="count me")
    metrics = httpx.get(server.base + "/metrics").text
    assert 'modserve_requests_total{model="tiny"}' in metrics
    assert "modserve_batch_size_bucket" in metrics
    assert "modserve_tokens_padded_total" in metrics
    assert httpx.get(server.base + "/openapi.json").json()["paths"]["/v1/moderations"]


def test_docs_work_offline(server: ServerProcess):
    """/docs loads Swagger UI 5 (OpenAPI 3.1) from this server, nothing from a CDN."""
    page = httpx.get(server.base + "/docs")
    assert page.status_code == 200 and "cdn." not in page.text
    assert "/docs-assets/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    js = httpx.get(server.base + "/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text[:2000]
    css = httpx.get(server.base + "/docs-assets/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(server.base + "/openapi.json").json()["openapi"].startswith("3.1")


def test_concurrent_requests_all_answered(client: openai.OpenAI):
    texts = [f"message number {i} " * (1 + i % 7) for i in range(40)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: client.moderations.create(input=t), texts))
    assert all(len(r.results) == 1 for r in results)


def _err(server: ServerProcess, status: int, **kw) -> dict:
    headers = {**AUTH, **kw.pop("headers", {})}
    r = httpx.post(server.base + "/v1/moderations", headers=headers, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [1, 2]}, "input[0]"),
        ({"input": None}, "input"),
        ({}, "input"),
        ({"input": [{"type": "text"}]}, "input[0].text"),
        ({"input": [{"type": "audio", "text": "x"}]}, "input[0].type"),
        ({"input": "x", "model": 3}, "model"),
        ({"input": "x", "temperature": 1}, "temperature"),
        ({"input": ["x"] * 9}, "input"),
        ({"input": "y" * 3001}, "input[0]"),
        ({"input": ["ok", "go " * 500]}, "input[1]"),  # 500 tokens > 400-token cap
    ],
)
def test_invalid_input_is_400(server: ServerProcess, payload: dict, param: str):
    err = _err(server, 400, json=payload)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


def test_image_part_is_400_saying_images_unsupported(server: ServerProcess):
    err = _err(
        server,
        400,
        json={"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
    )
    assert "not supported" in err["message"].lower() and "image" in err["message"].lower()


def test_malformed_json_is_400(server: ServerProcess):
    _err(server, 400, content=b'{"input": ', headers={"content-type": "application/json"})
    _err(server, 400, content=b"[1, 2]", headers={"content-type": "application/json"})


def test_wrong_or_missing_key_is_401(server: ServerProcess):
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        r = httpx.post(server.base + "/v1/moderations", json={"input": "x"}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=server.base + "/v1", api_key="nope", max_retries=0
        ).moderations.create(input="x")


def test_unknown_model_is_404(server: ServerProcess, client: openai.OpenAI):
    err = _err(server, 404, json={"input": "x", "model": "no-such-model"})
    assert err["code"] == "model_not_found" and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.moderations.create(input="x", model="no-such-model")


def test_body_too_large_is_413(server: ServerProcess):
    err = _err(server, 413, json={"input": ["z" * 2900] * 8})  # 23 KB > 20 KB
    assert "20000" in err["message"]


def test_unknown_route_uses_envelope(server: ServerProcess):
    r = httpx.get(server.base + "/v1/nothing-here")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
