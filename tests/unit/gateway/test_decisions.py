"""A project's thresholds on a model's result, and the audit record a decision leaves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from serving.engine.types import ClassifyResult, Timings
from serving.errors import QuotaExceeded
from serving.gateway.access import Gatekeeper, Principal
from serving.gateway.audit import open_audit_log
from serving.gateway.decisions import project_view, reason_of, record
from serving.gateway.policy import IMPLICIT_POLICY, Project

CATS = ["hate", "hate/threatening", "violence"]
SCORES = np.array([[0.3, 0.1, 0.9], [0.1, 0.1, 0.1]], dtype=np.float32)
MODEL_THRESHOLDS = np.array([0.5, 0.5, 0.5], dtype=np.float32)


def _result(thresholds: np.ndarray | None = MODEL_THRESHOLDS) -> ClassifyResult:
    flags = SCORES >= MODEL_THRESHOLDS
    return ClassifyResult("m", CATS, SCORES, flags, Timings(), thresholds=thresholds)


def test_project_thresholds_replace_the_models_where_set() -> None:
    project = Project(id="p", thresholds={"hate": 0.2})
    out = project_view(project, _result())
    assert out.flags.tolist() == [[True, False, True], [False, False, False]]
    assert out.thresholds is not None and np.allclose(out.thresholds, [0.2, 0.5, 0.5])
    assert _result().flags.tolist() == [[False, False, True], [False, False, False]]
    assert project_view(Project(id="q"), _result()).thresholds is MODEL_THRESHOLDS


def test_a_child_flagged_by_the_project_flags_its_parent() -> None:
    project = Project(id="p", thresholds={"hate/threatening": 0.05, "violence": 0.95})
    for thresholds in (MODEL_THRESHOLDS, None):  # with or without the model's thresholds
        out = project_view(project, _result(thresholds))
        assert out.flags.tolist() == [[True, True, False], [True, True, False]]


def test_decisions_are_audited_without_text_unless_the_project_keeps_it(tmp_path: Path) -> None:
    log = open_audit_log(f"jsonl:{tmp_path / 'audit.jsonl'}")
    assert log is not None
    gate = Gatekeeper(IMPLICIT_POLICY, None, [], "m", audit=log)
    keeps = Principal(Project(id="evals", retain_text=True), "k1", frozenset({"moderate"}))
    hides = Principal(Project(id="prod"), "k2", frozenset({"moderate"}))
    started = time.perf_counter()
    for principal in (keeps, hides):
        record(gate, request_id="r", route="/v1/moderations", principal=principal,
               started_s=started, model="m", model_version="3", result=_result(),
               texts=["first text", "second"])  # fmt: skip
    over = QuotaExceeded("Rate limit reached")
    record(gate, request_id="r2", route="/v1/moderations", principal=hides, started_s=started,
           status=429, error=over)  # fmt: skip
    assert log.close()
    text = (tmp_path / "audit.jsonl").read_text()
    kept, hidden, refused = [json.loads(line) for line in text.splitlines()]
    assert [i["text"] for i in kept["inputs"]] == ["first text", "second"]
    assert all("text" not in i for i in hidden["inputs"])
    assert "first text" not in text.splitlines()[1]
    assert kept["inputs"][0]["reason"] == "category_threshold:violence"
    assert kept["inputs"][0]["deciding_threshold"] == 0.5
    assert kept["inputs"][1]["reason"] == "below_thresholds"
    assert hidden["project_id"] == "prod" and hidden["key_id"] == "k2"
    assert hidden["policy_id"] == "implicit" and hidden["model_version"] == "3"
    assert refused["status"] == 429 and refused["reason"] == "quota_exceeded"
    assert refused["inputs"] == [] and refused["latency_ms"] >= 0
    assert reason_of(over) == "quota_exceeded"
