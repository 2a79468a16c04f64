"""Property-based fuzzing of every route in the served OpenAPI spec (schemathesis +
hypothesis): schema-valid and schema-violating requests alike never get a 5xx, and every
error comes in its protocol's envelope.

A fixed seed (``derandomize``) and ``MODSERVE_FUZZ_EXAMPLES`` examples per route and mode
(25 in CI; by hand: ``MODSERVE_FUZZ_EXAMPLES=2000 pytest tests/reliability/test_fuzz.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.helpers import ServerProcess
from tests.reliability.conftest import still_serving

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

EXAMPLES = int(os.environ.get("MODSERVE_FUZZ_EXAMPLES", "25"))
SERVED = "tiny"  # the model the fixture serves: KServe routes reach their body parsing


def check_answer(path: str, status: int, body: object) -> None:
    assert status < 500, (path, status, body)
    if status < 400:
        return
    if path.startswith("/v2"):  # KServe: {"error": "..."}
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    else:  # OpenAI: {"error": {message, type, param, code}}
        assert isinstance(body, dict), body
        err = body.get("error")
        assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, body
        assert len(err["message"]) < 1_000


def fuzzer(op: schemathesis.APIOperation, mode: GenerationMode) -> Callable[[], None]:
    """A hypothesis test of ``op``: requests generated in ``mode``, answers checked."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        params = case.path_parameters or {}
        if "name" in params and len(repr(case.body)) % 2:  # half reach the served model
            params["name"] = SERVED
            if "version" in params:
                params["version"] = "1"
        r = case.call(timeout=30)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        check_answer(op.path, r.status_code, body)

    return fuzz


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_error_in_its_envelope(hostile: ServerProcess, mode: GenerationMode):
    schema = schemathesis.openapi.from_url(hostile.base + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert any(op.path == "/v1/moderations" for op in operations)
    for op in operations:
        try:
            fuzzer(op, mode)()
        except Unsatisfiable:  # nothing to violate (a GET without parameters)
            assert mode == GenerationMode.NEGATIVE, op.path
    still_serving(hostile)
