"""``POST /v1/evaluate/toxicity`` over HTTP.

One real server with the shipped default model (schema, verdicts on clear cases, the batch
form, 400s, 401), and in-process apps over deterministic fake models behind a policy file
(a two-model ensemble with a failing member, every model failing, scopes and quotas).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.api.http import create_http_app
from serving.config import DEFAULT_MODEL_NAME, Settings
from serving.engine.metrics import Metrics
from serving.engine.types import Classifier, ClassifyResult, Timings
from serving.errors import ModelNotFound, Overloaded
from serving.gateway.keys import SqliteKeyStore
from serving.protocol.evaluate import (
    BatchEvaluationResponse,
    EvaluationResponse,
    ItemEvaluation,
)
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
PATH = "/v1/evaluate/toxicity"
KEY = "eval-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
HARMFUL = {"prompt": "What do you think of me?", "response": "I will kill you and your family."}
BENIGN = {
    "prompt": "Can you recommend a book for a long flight?",
    "response": "Sure: The Hobbit is a light, well-loved fantasy classic.",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    s = ServerProcess(
        ROOT / "model_repo",
        model=DEFAULT_MODEL_NAME,
        MODSERVE_API_KEYS=KEY,
        MODSERVE_MAX_INPUTS_PER_REQUEST="8",  # 4 items
    )
    s.wait_ready()
    yield s
    s.stop()


def post(server: ServerProcess, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(server.base + PATH, json=body, headers={**AUTH, **headers}, timeout=60)


def test_single_answer_is_complete(server: ServerProcess):
    r = post(server, HARMFUL, **{"x-request-id": "eval-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    parsed = EvaluationResponse.model_validate(body)  # every field, its type and range
    assert set(body) == set(EvaluationResponse.model_fields)
    assert parsed.metadata.request_id == "eval-42" == r.headers["x-request-id"]
    assert parsed.metadata.evaluator_version.startswith("modserve-")
    assert r.headers["x-model"] == DEFAULT_MODEL_NAME
    c = parsed.consensus_analysis
    assert (c.models_succeeded, c.models_failed, c.agreement_score) == (1, 0, 1.0)
    assert [(m.model, m.weight, m.role) for m in c.model_scores] == [
        (DEFAULT_MODEL_NAME, 1.0, "primary")
    ]
    (details,) = parsed.individual_model_details
    assert details.score == max(details.category_scores.values())
    assert len(details.top_categories) == 3
    assert parsed.model_execution.models[0].succeeded
    assert parsed.risk_assessment.thresholds.model_dump() == {
        "review_needed": 0.3, "reject": 0.6, "block": 0.8,
    }  # fmt: skip


def test_a_threat_is_rejected_and_a_book_tip_passes(server: ServerProcess):
    bad = EvaluationResponse.model_validate(post(server, HARMFUL).json())
    assert bad.evaluation.risk_level == "reject" and bad.evaluation.pass_fail == "fail"
    assert bad.evaluation.flagged
    assert bad.toxicity_analysis.recommended_action in ("removal_with_review", "block")
    assert {"violence", "harassment/threatening"} & set(bad.toxicity_analysis.categories_detected)
    good = EvaluationResponse.model_validate(post(server, BENIGN).json())
    assert good.evaluation.model_dump() == {
        "risk_level": "acceptable", "pass_fail": "pass", "flagged": False,
    }  # fmt: skip
    assert good.toxicity_analysis.recommended_action == "allow"
    assert good.toxicity_analysis.categories_detected == []


def _without_timings(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("model_execution", "metadata")}


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal JSON values, floats to 1e-5 (a batch pads differently from a lone input)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, abs_tol=1e-5), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_the_batch_form_answers_like_the_single_form(server: ServerProcess):
    r = post(server, {"items": [HARMFUL, BENIGN, HARMFUL]})
    assert r.status_code == 200, r.text
    batch = BatchEvaluationResponse.model_validate(r.json())
    assert len(batch.results) == 3
    for item, result in zip([HARMFUL, BENIGN, HARMFUL], r.json()["results"], strict=True):
        single = post(server, item).json()
        assert_close(_without_timings(result), _without_timings(single))
    assert set(r.json()) == {"results", "metadata"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"response": "hi"}, "prompt", "Missing required parameter: 'prompt'"),
        ({"prompt": "p", "response": 3}, "response", "'response' must be a string, not a number"),
        ({"prompt": "p", "response": "x" * 5001}, "response", "5001 characters; the limit is 5000"),
        ({"prompt": "p" * 5001, "response": "r"}, "prompt", "MODSERVE_EVALUATE_MAX_CHARS"),
        ({"items": []}, "items", "must not be an empty array"),
        ({"items": [BENIGN] * 5}, "items", "at most 4 are allowed"),
        ({"items": [{"prompt": "p"}]}, "items[0].response", "Missing required parameter"),
        ({"items": [BENIGN, {"prompt": "p", "response": "x" * 5001}]}, "items[1].response",
         "the limit is 5000"),
        ({**BENIGN, "model": "x"}, "model", "Unrecognized request argument"),
        ("just a string", None, "must be a JSON object"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_naming_the_field_and_limit(
    server: ServerProcess, body: Any, param: str | None, words: str
):
    r = post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"]


def test_a_key_is_required(server: ServerProcess):
    r = httpx.post(server.base + PATH, json=BENIGN, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_openapi_documents_the_route(server: ServerProcess):
    op = httpx.get(server.base + "/openapi.json").json()["paths"][PATH]["post"]
    request = op["requestBody"]["content"]["application/json"]["schema"]
    assert "$defs" not in str(request)  # refs inlined: the schema renders on its own
    assert {"200", "400", "401", "429"} <= set(op["responses"])


# --- fake models behind a policy file -----------------------------------------------------


class FakeModel:
    """violence 0.95 for a text with "kill", else 0.02; hate 0.1; or always ``fails``."""

    version = "1"
    ready = True
    categories = ["hate", "violence"]  # noqa: RUF012 - a stand-in's constant
    label_map: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, name: str, fails: Exception | None = None) -> None:
        self.name = name
        self.fails = fails

    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        if self.fails is not None:
            raise self.fails
        s = np.array([[0.1, 0.95 if "kill" in t else 0.02] for t in texts], dtype=np.float32)
        return ClassifyResult(self.name, self.categories, s, s >= 0.5, Timings(tokens=len(texts)))


class FakeRegistry:
    created = 0
    load_error: str | None = None
    draining = False
    ready = True

    def __init__(self, settings: Settings, models: list[FakeModel]) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engines: dict[str, Classifier] = {m.name: m for m in models}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def resolve(self, requested: str | None, version: str | None = None) -> Classifier:
        name = requested or self.settings.model
        if name not in self.engines:
            raise ModelNotFound(f"no model {name!r}", param="model")
        return self.engines[name]


POLICY = {
    "policy_id": "eval-tests",
    "projects": [
        {
            "id": "default",
            "models": ["*"],
            "evaluation_ensemble": [
                {"model": "good", "weight": 2.0},
                {"model": "overloaded", "weight": 1.0, "role": "secondary"},
            ],
        },
        {"id": "all-broken", "evaluation_ensemble": [{"model": "overloaded"}, {"model": "bug"}]},
        {"id": "one-a-minute", "quotas": {"requests_per_minute": 1}},
    ],
}


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, SqliteKeyStore]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    settings = Settings(
        model="good", policy_file=policy, key_store=tmp_path / "keys.db", api_keys=[KEY]
    )
    models = [
        FakeModel("good"),
        FakeModel("overloaded", Overloaded("The model is busy.")),
        FakeModel("bug", RuntimeError("secret internals")),
    ]
    app = create_http_app(FakeRegistry(settings, models))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, SqliteKeyStore(settings.key_store)


def bearer(store: SqliteKeyStore, project: str, scopes: list[str]) -> dict[str, str]:
    _, secret = store.create(project, scopes, None)
    return {"authorization": f"Bearer {secret}"}


async def test_a_failed_ensemble_model_is_counted_and_the_rest_decide(fake):
    client, _ = fake
    r = await client.post(PATH, json={"items": [HARMFUL, BENIGN]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["x-model"] == "good"
    bad, good = BatchEvaluationResponse.model_validate(r.json()).results
    for ev in (bad, good):
        c = ev.consensus_analysis
        assert (c.models_succeeded, c.models_failed) == (1, 1)
        assert [(m.model, m.weight) for m in c.model_scores] == [("good", 1.0)]
        failed = ev.model_execution.models[1]
        assert (failed.model, failed.succeeded, failed.error) == (
            "overloaded", False, "The model is busy.",
        )  # fmt: skip
        assert "model_failure" in [f.kind for f in ev.risk_assessment.risk_factors]
    assert bad.final_consensus_score == pytest.approx(0.95)
    assert bad.evaluation.risk_level == "reject" and bad.toxicity_analysis.recommended_action == (
        "block"
    )
    assert good.evaluation.pass_fail == "pass" and good.final_consensus_score == pytest.approx(0.1)
    ItemEvaluation.model_validate(good.model_dump())


async def test_when_every_model_fails_the_request_fails_with_their_causes(fake):
    client, store = fake
    r = await client.post(PATH, json=BENIGN, headers=bearer(store, "all-broken", ["evaluate"]))
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "ensemble_unavailable"
    assert "overloaded: The model is busy." in err["message"]
    assert "bug: internal error (RuntimeError)" in err["message"]
    assert "secret internals" not in err["message"]
    assert r.headers["retry-after"]  # the overload may pass


async def test_scopes_and_quotas_apply(fake):
    client, store = fake
    moderate_only = bearer(store, "default", ["moderate"])
    r = await client.post(PATH, json=BENIGN, headers=moderate_only)
    assert r.status_code == 403 and "'evaluate' scope" in r.json()["error"]["message"]
    limited = bearer(store, "one-a-minute", ["evaluate"])
    assert (await client.post(PATH, json=BENIGN, headers=limited)).status_code == 200
    r = await client.post(PATH, json=BENIGN, headers=limited)
    assert r.status_code == 429 and r.headers["retry-after"]
