"""``modserve audit summary``: what the decision audit log says about a time window.

Reads a JSONL log with its rotated backups (``audit.jsonl.N`` … ``.1``, then the live file)
or a SQLite log (``serving.gateway.audit``), keeps decisions since ``--since`` (``30m``,
``1h``, ``7d`` or an ISO timestamp; default 24h) and of ``--project``, and prints:

- per project: decisions, inputs, flagged inputs and the flag rate (flagged / inputs);
- per project x category: inputs flagged for the category and its rate over the project's
  inputs (categories never flagged are left out);
- decisions per policy id and version;
- the top reason codes with their share: a decision's own reason when it has one
  (``quota_exceeded``), else one per input (``category_threshold:hate``,
  ``below_thresholds``).

``--json`` prints the same summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.gateway.audit import Record, parse_spec
from serving.gateway.keys import parse_duration_s
from serving.text_table import aligned

LOG_ENV = "MODSERVE_AUDIT_LOG"  # where the server's audit log is, when --log is not given
DEFAULT_SINCE = "24h"
DEFAULT_TOP_REASONS = 10


class AuditLogError(Exception):
    """The log is missing or unreadable (exit code 2)."""


def parse_since(value: str, now_s: float) -> float:
    """``30m``/``1h``/``7d``/``90s`` before ``now_s``, or an ISO timestamp (UTC when it has no
    offset) -> epoch seconds."""
    try:
        return now_s - parse_duration_s(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give a duration (30m, 1h, 7d) or an ISO timestamp"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def log_files(path: Path) -> list[Path]:
    """A JSONL log and its rotated backups, oldest first."""
    backups = [
        (int(p.name[len(path.name) + 1 :]), p)
        for p in path.parent.glob(f"{path.name}.*")
        if p.name[len(path.name) + 1 :].isdigit()
    ]
    files = [p for _, p in sorted(backups, reverse=True)]
    return [*files, path] if path.exists() else files


def read_records(spec: str, since_s: float | None, project: str | None) -> Iterator[Record]:
    """Decisions of the log ``spec`` with ``ts >= since_s`` (and of ``project``).
    Raises AuditLogError when there is no readable log."""
    parsed = parse_spec(spec)
    if parsed is None:
        raise AuditLogError(f"no audit log: the spec {spec!r} means the log is off")
    kind, path = parsed
    if kind == "sqlite":
        return _sqlite_records(path, since_s, project)
    files = log_files(path)
    if not files:
        raise AuditLogError(f"no audit log at {path} (nor rotated backups {path.name}.N)")
    return (
        r
        for r in _jsonl_records(files)
        if (since_s is None or r["ts"] >= since_s)
        and (project is None or r["project_id"] == project)
    )


def _jsonl_records(files: list[Path]) -> Iterator[Record]:
    for path in files:
        try:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash mid-write
        except FileNotFoundError:
            continue  # rotated away while we read


def _sqlite_records(path: Path, since_s: float | None, project: str | None) -> Iterator[Record]:
    if not path.is_file():
        raise AuditLogError(f"no audit log at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    query = "SELECT record FROM decisions WHERE ts >= ?"
    args: list[float | str] = [since_s or 0.0]
    if project is not None:
        query, args = query + " AND project_id = ?", [*args, project]
    try:
        cursor = db.execute(query, args)
    except sqlite3.Error as e:
        db.close()
        raise AuditLogError(f"cannot read the audit log {path}: {e}") from e
    return _close_after((json.loads(record) for (record,) in cursor), db)


def _close_after(records: Iterable[Record], db: sqlite3.Connection) -> Iterator[Record]:
    try:
        yield from records
    finally:
        db.close()


def summarize(records: Iterable[Record], top_reasons: int = DEFAULT_TOP_REASONS) -> dict[str, Any]:
    """Counts and rates over ``records`` (see the module docstring), JSON-ready."""
    decisions: Counter[str] = Counter()
    inputs: Counter[str] = Counter()
    flagged_inputs: Counter[str] = Counter()
    flagged: Counter[tuple[str, str]] = Counter()
    policies: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    first_s = last_s = None
    for r in records:
        project = r["project_id"] or "-"
        decisions[project] += 1
        policies[(r["policy_id"] or "-", r["policy_version"] or "-")] += 1
        first_s = r["ts"] if first_s is None else min(first_s, r["ts"])
        last_s = r["ts"] if last_s is None else max(last_s, r["ts"])
        if r["reason"]:
            reasons[r["reason"]] += 1
        for item in r["inputs"]:
            inputs[project] += 1
            flagged_inputs[project] += bool(item["flagged"])
            flagged.update((project, c) for c in item["flagged"])
            if not r["reason"]:
                reasons[item["reason"]] += 1
    n_reasons = sum(reasons.values())
    return {
        "first": _iso(first_s),
        "last": _iso(last_s),
        "decisions": sum(decisions.values()),
        "inputs": sum(inputs.values()),
        "flagged_inputs": sum(flagged_inputs.values()),
        "flag_rate": _rate(sum(flagged_inputs.values()), sum(inputs.values())),
        "projects": [
            {
                "project": p,
                "decisions": decisions[p],
                "inputs": inputs[p],
                "flagged_inputs": flagged_inputs[p],
                "flag_rate": _rate(flagged_inputs[p], inputs[p]),
            }
            for p in sorted(decisions)
        ],
        "categories": [
            {"project": p, "category": c, "flagged_inputs": n, "flag_rate": _rate(n, inputs[p])}
            for (p, c), n in sorted(flagged.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
        ],
        "policy_versions": [
            {"policy_id": pid, "policy_version": version, "decisions": n}
            for (pid, version), n in sorted(policies.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "reasons": [
            {"reason": reason, "count": n, "share": _rate(n, n_reasons)}
            for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:top_reasons]
        ],
    }


def _rate(n: int, total: int) -> float:
    return n / total if total else 0.0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def format_tables(summary: dict[str, Any]) -> str:
    """The summary as aligned text tables for a terminal."""
    s = summary
    pct = "{:.1%}".format
    head = [
        f"audit log {s['log']}" if "log" in s else "audit log",
        f"since {s['since']}" if s.get("since") else "",
        f"project {s['project']}" if s.get("project") else "",
    ]
    totals = (
        f"{s['decisions']} decisions, {s['inputs']} inputs, {s['flagged_inputs']} flagged "
        f"({pct(s['flag_rate'])})"
    )
    if s["first"]:
        totals += f"; first {s['first']}, last {s['last']}"
    sections = [
        " ".join(h for h in head if h) + "\n" + totals,
        _table(["project", "decisions", "inputs", "flagged", "rate"], 1,
               [[p["project"], p["decisions"], p["inputs"], p["flagged_inputs"],
                 pct(p["flag_rate"])] for p in s["projects"]]),
        _table(["project", "category", "flagged", "rate"], 2,
               [[c["project"], c["category"], c["flagged_inputs"], pct(c["flag_rate"])]
                for c in s["categories"]]),
        _table(["policy", "version", "decisions"], 2,
               [[p["policy_id"], p["policy_version"], p["decisions"]]
                for p in s["policy_versions"]]),
        _table(["reason", "count", "share"], 1,
               [[r["reason"], r["count"], pct(r["share"])] for r in s["reasons"]]),
    ]  # fmt: skip
    return "\n\n".join(sections)


def _table(header: list[str], text_columns: int, rows: list[list[Any]]) -> str:
    """The first ``text_columns`` left-aligned, the rest (numbers) right-aligned."""
    if not rows:
        return "  ".join(header) + "\n(none)"
    cells = [header, *[[str(v) for v in row] for row in rows]]
    return "\n".join(aligned(cells, right=range(text_columns, len(header))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=["summary"], help="what to do with the log")
    p.add_argument(
        "--log",
        default=os.environ.get(LOG_ENV),
        help=f"the audit log: jsonl:PATH, sqlite:PATH or a path (default: ${LOG_ENV})",
    )
    p.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        help=f"a duration back from now (30m, 1h, 7d) or an ISO timestamp "
        f"(default {DEFAULT_SINCE})",
    )
    p.add_argument("--project", default=None, help="only this project id")
    p.add_argument("--top", type=int, default=DEFAULT_TOP_REASONS, help="reason codes to list")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """``modserve audit summary [options]`` (argv starts with ``summary``); 2 when the log
    is missing or unreadable."""
    a = build_parser().parse_args(argv)
    if not a.log:
        sys.stderr.write(f"modserve audit summary: give --log SPEC or set {LOG_ENV}\n")
        return 2
    try:
        since_s = parse_since(a.since, time.time())
        summary = {
            "log": a.log,
            "since": _iso(since_s),
            "project": a.project,
            **summarize(read_records(a.log, since_s, a.project), a.top),
        }
    except (ValueError, AuditLogError, OSError, sqlite3.Error) as e:
        sys.stderr.write(f"modserve audit summary: {e}\n")
        return 2
    print(json.dumps(summary, indent=1) if a.json else format_tables(summary))
    return 0
