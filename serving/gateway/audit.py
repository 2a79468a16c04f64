"""Decision audit log: one JSON record per moderation or evaluation decision, written off
the request path.

A request builds a ``Decision`` (per-input fields from ``decide_inputs``) and hands it to
``AuditLog.record``, which never blocks and never raises: the record goes on a bounded queue
and a writer thread drains it into a sink. When the sink falls behind and the queue is full,
the record is dropped and counted (``AuditLog.dropped`` and the caller's drop counter), so a
slow disk costs audit records, never request latency.

Sinks (``open_audit_log(spec)``):

- ``jsonl:/var/log/modserve/audit.jsonl`` (the default kind): one JSON object per line,
  rotated to ``audit.jsonl.1`` … ``.N`` past ``max_bytes``; cheapest to write, ships with any
  log collector. Use one file per process: two processes rotating one file lose lines.
- ``sqlite:/var/lib/modserve/audit.db``: table ``decisions`` (indexed ts, project_id,
  policy_version, reason, model; the whole record in ``record``) and ``decision_inputs`` (one
  row per input); for ad-hoc SQL. One transaction per batch.

Input text is stored only when the caller passes it (projects that opted in);
``modserve audit summary`` (``serving.gateway.audit_summary``) reads either sink.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

JSONL_MAX_BYTES = 100 * 1024 * 1024  # per file; disk use is at most (backups + 1) x this
JSONL_BACKUPS = 5
DEFAULT_QUEUE_SIZE = 10_000
BATCH_MAX_RECORDS = 256
ERROR_LOG_EVERY = 100  # failed sink writes: log the first, then one in this many
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
OFF_SPECS = ("", "off", "none")

Record = dict[str, Any]
SinkKind = Literal["jsonl", "sqlite"]


@dataclass
class InputDecision:
    """What decided one input.

    ``max_score``/``max_category``: the top score over all categories. ``reason``:
    ``category_threshold:<cat>`` for the flagged category that decided (see
    ``decide_inputs``) or ``below_thresholds``; ``deciding_threshold`` is that category's
    threshold (of the top-scoring one when nothing flagged). ``text`` only for projects that
    retain input text; ``None`` leaves it out of the record.
    """

    flagged: list[str]
    max_score: float
    max_category: str | None
    deciding_threshold: float | None
    reason: str
    text: str | None = None


@dataclass
class Decision:
    """One audited request. ``reason`` is for whole-request outcomes (``quota_exceeded``,
    ``input_too_long``, ``forbidden``, ``unauthorized``), ``None`` when the inputs decided.
    ``key_id`` identifies the API key; never put the key itself here."""

    ts: float  # epoch seconds
    request_id: str
    kind: Literal["moderation", "evaluation"]
    route: str
    project_id: str | None
    key_id: str | None
    policy_id: str | None
    policy_version: str | None  # hash of the policy file
    model: str | None
    model_version: str | None
    status: int  # HTTP status answered
    reason: str | None
    latency_ms: float
    inputs: list[InputDecision] = field(default_factory=list)

    def to_record(self) -> Record:
        """The JSON-ready record; inputs without text carry no ``text`` key."""
        record = asdict(self)
        for item in record["inputs"]:
            if item["text"] is None:
                del item["text"]
        return record


def decide_inputs(
    categories: Sequence[str],
    scores: np.ndarray,
    flags: np.ndarray,
    thresholds: dict[str, float],
    texts: Sequence[str] | None = None,
) -> list[InputDecision]:
    """Per-input audit fields from (N, C) ``scores`` and ``flags`` over ``categories``.

    The deciding category is the highest-scoring flagged category whose own score reached its
    threshold; a parent flagged only through its child (``hate`` by ``hate/threatening``)
    decides only when no category crossed its own threshold. ``texts`` (the inputs, for
    projects that retain them) are copied into the records; ``None`` stores no text.
    """
    col = {c: i for i, c in enumerate(categories)}
    decisions = []
    for i, (row, row_flags) in enumerate(zip(scores, flags, strict=True)):
        flagged = [categories[int(c)] for c in np.flatnonzero(row_flags)]
        top = int(np.argmax(row)) if len(row) else None
        deciding: str | None
        if flagged:
            own = [c for c in flagged if c in thresholds and row[col[c]] >= thresholds[c]]
            deciding = max(own or flagged, key=lambda c: float(row[col[c]]))
            reason = f"category_threshold:{deciding}"
        else:
            deciding = None if top is None else categories[top]
            reason = "below_thresholds"
        decisions.append(
            InputDecision(
                flagged=flagged,
                max_score=0.0 if top is None else float(row[top]),
                max_category=None if top is None else categories[top],
                deciding_threshold=None if deciding is None else thresholds.get(deciding),
                reason=reason,
                text=None if texts is None else texts[i],
            )
        )
    return decisions


class AuditSink(Protocol):
    """Where records go. ``write`` is called from one writer thread only."""

    def write(self, records: list[Record]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """JSON lines appended to ``path``; before a line would take the file past ``max_bytes``
    it is renamed to ``path.1`` (``.1`` -> ``.2`` …, the oldest past ``backups`` deleted).

    Tune ``max_bytes`` x (``backups`` + 1) to the disk you give the log; ``backups=0``
    truncates instead of keeping history. Each batch is flushed to the OS (readable at once),
    not fsynced: a machine crash can lose the last batch.
    """

    def __init__(
        self, path: str | Path, max_bytes: int = JSONL_MAX_BYTES, backups: int = JSONL_BACKUPS
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"max_bytes must be > 0 and backups >= 0, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def write(self, records: list[Record]) -> None:
        # Serialise first: a record that cannot be encoded fails the batch before any write.
        lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records]
        for line in lines:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rollover()
            self._file.write(line)
            self._size += len(line)
        self._file.flush()

    def _rollover(self) -> None:
        self._file.close()
        try:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.backups:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink(missing_ok=True)
        finally:  # a failed rename keeps appending to the same file rather than stop
            self._file = self.path.open("ab")
            self._size = self._file.tell()

    def close(self) -> None:
        self._file.close()


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT,
    kind TEXT,
    project_id TEXT,
    policy_id TEXT,
    policy_version TEXT,
    model TEXT,
    status INTEGER,
    reason TEXT,
    latency_ms REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE INDEX IF NOT EXISTS decisions_project_ts ON decisions (project_id, ts);
CREATE INDEX IF NOT EXISTS decisions_policy_version ON decisions (policy_version);
CREATE INDEX IF NOT EXISTS decisions_reason ON decisions (reason);
CREATE INDEX IF NOT EXISTS decisions_model ON decisions (model);
CREATE TABLE IF NOT EXISTS decision_inputs (
    decision_id INTEGER NOT NULL REFERENCES decisions (id),
    position INTEGER NOT NULL,
    flagged TEXT NOT NULL,
    max_score REAL,
    max_category TEXT,
    deciding_threshold REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS decision_inputs_decision ON decision_inputs (decision_id);
CREATE INDEX IF NOT EXISTS decision_inputs_reason ON decision_inputs (reason);
"""
_DECISION_COLUMNS = (
    "ts",
    "request_id",
    "kind",
    "project_id",
    "policy_id",
    "policy_version",
    "model",
    "status",
    "reason",
    "latency_ms",
)


class SqliteSink:
    """Records into a SQLite database at ``path`` (created with its schema, WAL mode so
    ``modserve audit summary`` can read while the server writes). ``decision_inputs.flagged``
    is a JSON array: ``... JOIN json_each(decision_inputs.flagged)`` lists flagged
    categories."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written by the AuditLog's one writer thread; opened and closed by its owner.
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SQLITE_SCHEMA)

    def write(self, records: list[Record]) -> None:
        insert_decision = (
            f"INSERT INTO decisions ({', '.join(_DECISION_COLUMNS)}, record) "
            f"VALUES ({', '.join('?' * (len(_DECISION_COLUMNS) + 1))})"
        )
        with self._db:  # one transaction per batch
            for record in records:
                row = [record.get(c) for c in _DECISION_COLUMNS]
                cursor = self._db.execute(
                    insert_decision, [*row, json.dumps(record, ensure_ascii=False)]
                )
                self._db.executemany(
                    "INSERT INTO decision_inputs (decision_id, position, flagged, max_score, "
                    "max_category, deciding_threshold, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            cursor.lastrowid,
                            i,
                            json.dumps(item["flagged"]),
                            item["max_score"],
                            item["max_category"],
                            item["deciding_threshold"],
                            item["reason"],
                        )
                        for i, item in enumerate(record["inputs"])
                    ],
                )

    def close(self) -> None:
        self._db.close()


_STOP = object()


class AuditLog:
    """A bounded queue in front of ``sink`` and the one thread that writes it.

    ``queue_size`` is how many decisions may wait for the sink: size it to the request rate
    times the longest sink stall to ride out (10 000 covers 1 000 decisions/s through a 10 s
    disk hiccup; a waiting decision holds a few KiB, more with retained input text).
    Past it, ``record`` drops. ``batch_max_records`` caps one ``sink.write`` (one SQLite
    transaction); batches form by themselves while the sink is busy, nothing waits for them.

    Counters (also exported through the optional prometheus counters, unlabelled or a
    ``.labels(...)`` child): ``written`` decisions the sink took; ``dropped`` decisions
    refused because the queue was full or the log closed; ``errors`` decisions lost because
    ``sink.write`` raised (the whole batch counts). ``record`` hands the ``Decision`` over:
    do not change it afterwards.
    """

    def __init__(
        self,
        sink: AuditSink,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        batch_max_records: int = BATCH_MAX_RECORDS,
        written_metric: Counter | None = None,
        dropped_metric: Counter | None = None,
        errors_metric: Counter | None = None,
    ) -> None:
        self.sink = sink
        self.batch_max_records = batch_max_records
        self.written = self.dropped = self.errors = 0
        self._failed_writes = 0
        self._metrics = {
            "written": written_metric,
            "dropped": dropped_metric,
            "errors": errors_metric,
        }
        self._queue: queue.Queue[Decision | object] = queue.Queue(maxsize=queue_size)
        self._drop_lock = threading.Lock()  # record() runs on many threads
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, decision: Decision) -> None:
        """Queue ``decision`` for the sink; never blocks, never raises."""
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(decision)
        except queue.Full:
            with self._drop_lock:
                self.dropped += 1
            self._count("dropped", 1)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is queued, stop the writer and close the sink. False when the sink did
        not drain within ``timeout_s`` (the sink is then left open to its thread)."""
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("audit log: sink still busy after %.1f s, %d decisions unwritten",
                        timeout_s, self._queue.qsize())  # fmt: skip
            return False
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("audit log: sink still busy after %.1f s", timeout_s)
            return False
        self.sink.close()
        return True

    def _run(self) -> None:
        stopping = False
        while True:
            items = [] if stopping else [self._queue.get()]
            while len(items) < self.batch_max_records:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # After _STOP, keep draining what a racing record() put behind it, then exit.
            stopping = stopping or any(item is _STOP for item in items)
            batch = [item for item in items if isinstance(item, Decision)]
            if batch:
                self._write(batch)
            if stopping and len(items) < self.batch_max_records:
                return

    def _write(self, batch: list[Decision]) -> None:
        try:
            self.sink.write([d.to_record() for d in batch])
        except Exception:
            self.errors += len(batch)
            self._failed_writes += 1
            self._count("errors", len(batch))
            if self._failed_writes % ERROR_LOG_EVERY == 1:
                log.exception("audit log: sink write failed (%d failed writes, %d decisions "
                              "lost so far)", self._failed_writes, self.errors)  # fmt: skip
            return
        self.written += len(batch)
        self._count("written", len(batch))

    def _count(self, name: str, n: int) -> None:
        if (metric := self._metrics[name]) is not None:
            metric.inc(n)


def parse_spec(spec: str) -> tuple[SinkKind, Path] | None:
    """``jsonl:PATH``, ``sqlite:PATH``, a bare path (SQLite for .db/.sqlite/.sqlite3, else
    JSONL), or ``""``/``off``/``none`` -> None (no audit log)."""
    spec = spec.strip()
    if spec.lower() in OFF_SPECS:
        return None
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("jsonl", "sqlite"):
        if not rest:
            raise ValueError(f"audit log spec {spec!r} names no path")
        return ("sqlite" if kind == "sqlite" else "jsonl"), Path(rest)
    path = Path(spec)
    return ("sqlite" if path.suffix.lower() in SQLITE_SUFFIXES else "jsonl"), path


def open_audit_log(
    spec: str,
    *,
    max_bytes: int = JSONL_MAX_BYTES,
    backups: int = JSONL_BACKUPS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    written_metric: Counter | None = None,
    dropped_metric: Counter | None = None,
    errors_metric: Counter | None = None,
) -> AuditLog | None:
    """The audit log ``spec`` names (``parse_spec``), None when it is off. ``max_bytes`` and
    ``backups`` apply to JSONL only. Raises OSError/sqlite3.Error when the sink cannot be
    opened, so a bad path fails at start rather than per request."""
    parsed = parse_spec(spec)
    if parsed is None:
        return None
    kind, path = parsed
    sink: AuditSink = SqliteSink(path) if kind == "sqlite" else JsonlSink(path, max_bytes, backups)
    return AuditLog(
        sink,
        queue_size,
        written_metric=written_metric,
        dropped_metric=dropped_metric,
        errors_metric=errors_metric,
    )
