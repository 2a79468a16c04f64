"""The decision audit log (serving.gateway.audit) and its summary (audit_summary)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter

from serving.gateway.audit import (
    AuditLog,
    Decision,
    InputDecision,
    JsonlSink,
    Record,
    SqliteSink,
    decide_inputs,
    open_audit_log,
    parse_spec,
)
from serving.gateway.audit_summary import log_files, main, parse_since, read_records, summarize
from training.cli import main as training_cli_main

CATS = ["hate", "hate/threatening", "violence"]
THRESHOLDS = {"hate": 0.5, "hate/threatening": 0.3, "violence": 0.6}


def decision(
    request_id: str = "req_1",
    ts: float = 1_700_000_000.0,
    project: str | None = "acme",
    policy_version: str | None = "v1",
    inputs: list[InputDecision] | None = None,
    reason: str | None = None,
    status: int = 200,
) -> Decision:
    return Decision(
        ts=ts,
        request_id=request_id,
        kind="moderation",
        route="/v1/moderations",
        project_id=project,
        key_id="key_7",
        policy_id="default",
        policy_version=policy_version,
        model="modserve-moderation-minilm",
        model_version="3",
        status=status,
        reason=reason,
        latency_ms=12.5,
        inputs=[] if inputs is None else inputs,
    )


def flagged_input(*categories: str) -> InputDecision:
    reason = f"category_threshold:{categories[0]}" if categories else "below_thresholds"
    return InputDecision(list(categories), 0.9, "hate", 0.5, reason)


def lines(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- per-input fields --------------------------------------------------------------------------


def test_decide_inputs_names_the_category_that_crossed_its_threshold() -> None:
    scores = np.array(
        [
            [0.8, 0.2, 0.7],  # hate and violence over their thresholds: hate scores higher
            [0.45, 0.4, 0.1],  # hate flagged only through hate/threatening
            [0.3, 0.1, 0.4],  # nothing flagged: violence is the top score
        ],
        dtype=np.float32,
    )
    flags = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)
    out = decide_inputs(CATS, scores, flags, THRESHOLDS)
    assert [d.flagged for d in out] == [["hate", "violence"], ["hate", "hate/threatening"], []]
    assert [d.reason for d in out] == [
        "category_threshold:hate",
        "category_threshold:hate/threatening",
        "below_thresholds",
    ]
    assert [d.deciding_threshold for d in out] == [0.5, 0.3, 0.6]
    assert [d.max_category for d in out] == ["hate", "hate", "violence"]
    assert [d.max_score for d in out] == pytest.approx([0.8, 0.45, 0.4])
    assert all(type(d.max_score) is float and d.text is None for d in out)
    with_text = decide_inputs(CATS, scores[:1], flags[:1], THRESHOLDS, ["some text"])
    assert with_text[0].text == "some text"


# --- sinks -------------------------------------------------------------------------------------


def test_records_round_trip_through_both_sinks(tmp_path: Path) -> None:
    inputs = [flagged_input("hate"), flagged_input()]
    decisions = [decision("req_a", inputs=inputs), decision("req_b", reason="quota_exceeded")]
    jsonl = open_audit_log(f"jsonl:{tmp_path / 'audit.jsonl'}")
    sqlite = open_audit_log(f"sqlite:{tmp_path / 'audit.db'}")
    assert jsonl is not None and sqlite is not None
    for log in (jsonl, sqlite):
        for d in decisions:
            log.record(d)
        assert log.close()
        assert (log.written, log.dropped, log.errors) == (2, 0, 0)
    expected = [d.to_record() for d in decisions]
    assert lines(tmp_path / "audit.jsonl") == expected
    assert expected[0]["key_id"] == "key_7" and expected[0]["inputs"][0]["flagged"] == ["hate"]

    db = sqlite3.connect(tmp_path / "audit.db")
    rows = db.execute("SELECT request_id, project_id, reason, status, record FROM decisions")
    assert [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows] == [
        ("req_a", "acme", None, 200, expected[0]),
        ("req_b", "acme", "quota_exceeded", 200, expected[1]),
    ]
    per_input = db.execute(
        "SELECT d.request_id, i.position, i.reason, f.value FROM decision_inputs i "
        "JOIN decisions d ON d.id = i.decision_id JOIN json_each(i.flagged) f"
    ).fetchall()
    assert per_input == [("req_a", 0, "category_threshold:hate", "hate")]
    db.close()


def test_no_input_text_is_stored_unless_given(tmp_path: Path) -> None:
    scores, flags = np.array([[0.9, 0.1, 0.1]]), np.array([[True, False, False]])
    log = open_audit_log(str(tmp_path / "audit.jsonl"))
    assert log is not None
    log.record(decision("req_a", inputs=decide_inputs(CATS, scores, flags, THRESHOLDS)))
    log.record(
        decision("req_b", inputs=decide_inputs(CATS, scores, flags, THRESHOLDS, ["kept words"]))
    )
    assert log.close()
    a, b = lines(tmp_path / "audit.jsonl")
    assert "text" not in a["inputs"][0] and b["inputs"][0]["text"] == "kept words"
    assert (tmp_path / "audit.jsonl").read_text().count("words") == 1


def test_rotation_keeps_backups_and_the_summary_reads_across_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    line_bytes = len(json.dumps(decision("req_00").to_record())) + 1
    sink = JsonlSink(path, max_bytes=3 * line_bytes, backups=2)
    for i in range(10):  # one write per record: 3 lines per file
        sink.write([decision(f"req_{i:02d}").to_record()])
    sink.close()
    assert log_files(path) == [tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1", path]
    assert all(p.stat().st_size <= 3 * line_bytes for p in log_files(path))
    # 10 records, 3 per file, 3 files: the oldest file (req_00..02) rotated away.
    got = [r["request_id"] for r in read_records(str(path), None, None)]
    assert got == [f"req_{i:02d}" for i in range(3, 10)]

    wide = JsonlSink(tmp_path / "wide.jsonl", max_bytes=3 * line_bytes, backups=5)
    wide.write([decision(f"req_{i:02d}").to_record() for i in range(10)])
    wide.close()
    got = [r["request_id"] for r in read_records(f"jsonl:{tmp_path / 'wide.jsonl'}", None, None)]
    assert got == [f"req_{i:02d}" for i in range(10)]
    assert len(log_files(tmp_path / "wide.jsonl")) == 4

    none_kept = JsonlSink(tmp_path / "short.jsonl", max_bytes=3 * line_bytes, backups=0)
    none_kept.write([decision(f"req_{i:02d}").to_record() for i in range(10)])
    none_kept.close()
    assert log_files(tmp_path / "short.jsonl") == [tmp_path / "short.jsonl"]
    assert [r["request_id"] for r in lines(tmp_path / "short.jsonl")] == ["req_09"]


# --- the queue ---------------------------------------------------------------------------------


class BlockingSink:
    """Takes records only once ``release`` is set; ``entered`` says the writer is inside."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.records: list[Record] = []
        self.closed = False

    def write(self, records: list[Record]) -> None:
        self.entered.set()
        assert self.release.wait(5)
        self.records += records

    def close(self) -> None:
        self.closed = True


def test_a_blocked_sink_makes_record_drop_and_count_never_wait() -> None:
    registry = CollectorRegistry()
    written = Counter("audit_written", "decisions written", registry=registry)
    dropped = Counter("audit_dropped", "decisions dropped", registry=registry)
    sink = BlockingSink()
    log = AuditLog(sink, queue_size=2, written_metric=written, dropped_metric=dropped)
    log.record(decision("req_0"))
    assert sink.entered.wait(5)  # the writer holds req_0 inside the stuck sink
    took_s = []
    for i in range(1, 6):  # req_1, req_2 fill the queue; req_3..5 are dropped
        start = time.perf_counter()
        log.record(decision(f"req_{i}"))
        took_s.append(time.perf_counter() - start)
    assert max(took_s) < 0.05
    assert log.dropped == 3 and registry.get_sample_value("audit_dropped_total") == 3
    sink.release.set()
    assert log.close()
    assert [r["request_id"] for r in sink.records] == ["req_0", "req_1", "req_2"]
    assert log.written == 3 and registry.get_sample_value("audit_written_total") == 3
    assert sink.closed


def test_a_failing_sink_counts_errors_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class FailingSink:
        def write(self, records: list[Record]) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    registry = CollectorRegistry()
    errors = Counter("audit_errors", "decisions lost to sink errors", registry=registry)
    log = AuditLog(FailingSink(), errors_metric=errors)
    with caplog.at_level(logging.ERROR, logger="serving.gateway.audit"):
        for i in range(5):
            log.record(decision(f"req_{i}"))
        assert log.close()
    assert (log.written, log.dropped, log.errors) == (0, 0, 5)
    assert registry.get_sample_value("audit_errors_total") == 5
    failures = [r for r in caplog.records if "sink write failed" in r.getMessage()]
    assert len(failures) == 1 and "disk full" in (
        failures[0].exc_text or ""
    )  # logged once, not per batch


def test_close_flushes_everything_queued_and_later_records_drop(tmp_path: Path) -> None:
    log = AuditLog(JsonlSink(tmp_path / "audit.jsonl"), batch_max_records=64)
    for i in range(1000):
        log.record(decision(f"req_{i}"))
    assert log.close()
    assert log.written == 1000 and len(lines(tmp_path / "audit.jsonl")) == 1000
    log.record(decision("late"))
    assert log.dropped == 1 and len(lines(tmp_path / "audit.jsonl")) == 1000


def test_specs_name_the_sink_or_turn_the_log_off(tmp_path: Path) -> None:
    for off in ("", "off", "OFF", " none "):
        assert parse_spec(off) is None and open_audit_log(off) is None
    assert parse_spec("/var/log/audit.jsonl") == ("jsonl", Path("/var/log/audit.jsonl"))
    assert parse_spec("audit.db") == ("sqlite", Path("audit.db"))
    assert parse_spec("sqlite:/x/audit.log") == ("sqlite", Path("/x/audit.log"))
    assert parse_spec("jsonl:/x/audit.db") == ("jsonl", Path("/x/audit.db"))
    with pytest.raises(ValueError, match="no path"):
        parse_spec("sqlite:")
    log = open_audit_log(str(tmp_path / "nested" / "audit.sqlite3"))
    assert log is not None and isinstance(log.sink, SqliteSink)
    assert log.close()


# --- the summary -------------------------------------------------------------------------------


def fixture_decisions(now_s: float) -> list[Decision]:
    return [
        decision("d1", now_s - 600, "acme", "v1", [flagged_input("hate"), flagged_input()]),
        decision("d2", now_s - 300, "acme", "v2", [flagged_input("hate/threatening", "hate")]),
        decision("d3", now_s - 60, "beta", "v2", [flagged_input("violence"), flagged_input()]),
        decision("d4", now_s - 30, "beta", "v2", reason="quota_exceeded", status=429),
        decision("d5", now_s - 7200, "acme", "v1", [flagged_input("violence")]),  # 2 h old
    ]


@pytest.fixture(params=["jsonl", "sqlite"])
def log_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    records = [d.to_record() for d in fixture_decisions(time.time())]
    if request.param == "jsonl":
        sink: JsonlSink | SqliteSink = JsonlSink(tmp_path / "audit.jsonl")
        spec = str(tmp_path / "audit.jsonl")
    else:
        sink, spec = SqliteSink(tmp_path / "audit.db"), f"sqlite:{tmp_path / 'audit.db'}"
    sink.write(records)
    sink.close()
    return spec


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_counts_the_last_hour(log_spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    s = run_json(capsys, "--log", log_spec, "--since", "1h")
    assert (s["decisions"], s["inputs"], s["flagged_inputs"], s["flag_rate"]) == (4, 5, 3, 0.6)
    assert s["projects"] == [
        {"project": "acme", "decisions": 2, "inputs": 3, "flagged_inputs": 2,
         "flag_rate": 2 / 3},
        {"project": "beta", "decisions": 2, "inputs": 2, "flagged_inputs": 1, "flag_rate": 0.5},
    ]  # fmt: skip
    assert s["categories"] == [
        {"project": "acme", "category": "hate", "flagged_inputs": 2, "flag_rate": 2 / 3},
        {"project": "acme", "category": "hate/threatening", "flagged_inputs": 1,
         "flag_rate": 1 / 3},
        {"project": "beta", "category": "violence", "flagged_inputs": 1, "flag_rate": 0.5},
    ]  # fmt: skip
    assert s["policy_versions"] == [
        {"policy_id": "default", "policy_version": "v2", "decisions": 3},
        {"policy_id": "default", "policy_version": "v1", "decisions": 1},
    ]
    assert [(r["reason"], r["count"], r["share"]) for r in s["reasons"]] == [
        ("below_thresholds", 2, 2 / 6),
        ("category_threshold:hate", 1, 1 / 6),
        ("category_threshold:hate/threatening", 1, 1 / 6),
        ("category_threshold:violence", 1, 1 / 6),
        ("quota_exceeded", 1, 1 / 6),
    ]


def test_summary_filters_by_project_and_a_longer_window(
    log_spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = run_json(capsys, "--log", log_spec, "--since", "1h", "--project", "acme", "--top", "2")
    assert (s["project"], s["decisions"], s["inputs"], s["flagged_inputs"]) == ("acme", 2, 3, 2)
    assert [p["project"] for p in s["projects"]] == ["acme"]
    assert [(p["policy_version"], p["decisions"]) for p in s["policy_versions"]] == [
        ("v1", 1),
        ("v2", 1),
    ]
    assert [(r["reason"], r["share"]) for r in s["reasons"]] == [
        ("below_thresholds", 1 / 3),
        ("category_threshold:hate", 1 / 3),
    ]
    s = run_json(capsys, "--log", log_spec, "--since", "3h", "--project", "acme")
    assert (s["decisions"], s["inputs"]) == (3, 4)
    assert {c["category"]: c["flag_rate"] for c in s["categories"]}["violence"] == 0.25


def test_summary_prints_tables(log_spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--log", log_spec, "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "4 decisions, 5 inputs, 3 flagged (60.0%)" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["acme", "2", "3", "2", "66.7%"] in rows
    assert ["acme", "hate/threatening", "1", "33.3%"] in rows
    assert ["default", "v2", "3"] in rows
    assert ["quota_exceeded", "1", "16.7%"] in rows


def test_since_takes_durations_and_iso_timestamps() -> None:
    now_s = 1_700_000_000.0
    assert parse_since("30m", now_s) == now_s - 1800
    assert parse_since("7d", now_s) == now_s - 7 * 86400
    assert parse_since("2023-11-14T22:13:20+00:00", 0) == now_s
    assert parse_since("2023-11-14T22:13:20", 0) == now_s  # no offset: UTC
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday", now_s)
    empty = summarize([])
    assert (empty["decisions"], empty["flag_rate"], empty["first"], empty["reasons"]) == (
        0,
        0,
        None,
        [],
    )


def test_summary_exits_2_on_a_missing_or_unreadable_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.db").write_text("not a database")
    for spec in (str(tmp_path / "absent.jsonl"), f"sqlite:{tmp_path / 'absent.db'}",
                 str(tmp_path / "junk.db"), "off"):  # fmt: skip
        assert main(["summary", "--log", spec]) == 2
        assert "modserve audit summary:" in capsys.readouterr().err
    assert main(["summary", "--log", str(tmp_path / "junk.db"), "--since", "soon"]) == 2


def test_modserve_audit_dispatches_to_the_summary(
    log_spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert training_cli_main(["audit", "summary", "--log", log_spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decisions"] == 5  # default window: 24 h
