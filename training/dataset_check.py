"""``modserve dataset check FILE.jsonl``: quality control for a moderation dataset.

One JSON object per line, checked against ``Row``:

* ``text`` (string, required);
* exactly one of ``label`` (one category, or ``"safe"``/``"none"`` for no category) and
  ``labels`` (a list of the categories that apply, or a ``{category: 0..1}`` dict that,
  like the training corpus, states only its own keys: an absent category is unknown);
* optional ``severity`` (string or integer), ``tactic`` and ``batch`` (strings).

Categories are the OpenAI ones of ``serving.categories``; an unknown one fails the row.
Keys outside the schema are kept and reported (``extra_keys``), not failed: the training
corpus layout carries a ``source`` key.

Checks: invalid JSON, schema failures, empty and over-long texts (``max_chars``), exact
duplicates (after NFKC, case folding and whitespace collapsing), near-duplicates (MinHash
over character 5-grams with LSH banding, estimated Jaccard >= ``near_threshold``), rows
that leak into an evaluation file (exact and near), and per ``batch`` the label balance
and the severity distribution. ``--score URL`` sends the rows to a served model and lists
the rows whose label disagrees most with it. Exit code 1 when a line is invalid JSON or
fails the schema, 2 on a usage error or a failed ``--score``, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from tqdm import tqdm

from serving.categories import BY_WIRE, WIRE_NAMES
from serving.config import Settings
from serving.text_table import aligned
from training.data import parse_row

NO_CATEGORY = ("safe", "none")  # `label` values meaning "no category applies"
DEFAULT_MAX_CHARS = int(Settings.model_fields["max_input_chars"].default)  # what the server takes
DEFAULT_NEAR_THRESHOLD = 0.9
REPORT_LIMIT = 1000  # findings listed per kind in the JSON report (counts are always complete)
NO_BATCH = "(no batch)"

# Finding kinds, in report order, with their table titles; the first two fail the file.
KINDS = {
    "invalid_json": "invalid JSON",
    "schema": "schema failure",
    "empty_text": "empty text",
    "over_long": "over-long text",
    "duplicate": "exact duplicate",
    "near_duplicate": "near-duplicate",
    "leak_exact": "leaks into eval, exact",
    "leak_near": "leaks into eval, near",
    "extra_keys": "keys outside the schema",
}
FAILING_KINDS = ("invalid_json", "schema")

# MinHash / LSH. More permutations estimate Jaccard more precisely (std ~ sqrt(J(1-J)/n))
# at a linear cost; CHUNK_CHARS bounds memory (8 x NUM_PERM bytes per character) and is
# sized for the CPU cache: 4x larger chunks ran 2.5x slower.
SHINGLE_CHARS = 5
NUM_PERM = 128
CHUNK_CHARS = 1 << 13
LSH_RECALL = 0.99  # chance that a pair exactly at the threshold is compared at all
BUCKET_WINDOW = 50  # in an LSH bucket, each row is compared with the 50 before it at most

SCORE_BATCH_INPUTS = 32  # texts per /v1/moderations request
HTTP_TIMEOUT_S = 120.0
REVIEW_TEXT_CHARS = 100


class Row(BaseModel):
    """One dataset row (strict types: no coercion of numbers to strings or back)."""

    model_config = ConfigDict(strict=True, extra="allow")

    text: str
    label: str | None = None
    labels: list[str] | dict[str, bool | int | float] | None = None
    severity: str | int | None = None
    tactic: str | None = None
    batch: str | None = None

    @field_validator("label")
    @classmethod
    def _known_label(cls, v: str | None) -> str | None:
        if v is not None and v not in BY_WIRE and v not in NO_CATEGORY:
            raise ValueError(f"unknown label {v!r}: not an OpenAI category, 'safe' or 'none'")
        return v

    @field_validator("labels")
    @classmethod
    def _known_labels(
        cls, v: list[str] | dict[str, bool | int | float] | None
    ) -> list[str] | dict[str, bool | int | float] | None:
        if v is None:
            return v
        unknown = [w for w in v if w not in BY_WIRE]
        if unknown:
            raise ValueError(f"unknown labels {unknown}: not OpenAI categories")
        if isinstance(v, dict) and not all(0 <= x <= 1 for x in v.values()):
            raise ValueError("label values must lie in [0, 1]")
        return v

    @model_validator(mode="after")
    def _one_label_field(self) -> Row:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give exactly one of `label` and `labels`")
        return self

    def targets(self) -> dict[str, float]:
        """Known categories -> 1.0 (applies) .. 0.0 (does not); an absent one is unknown.

        ``label`` and a ``labels`` list name every category that applies (all others are 0;
        a named child implies its parent, e.g. ``hate/threatening`` => ``hate``, as the
        server's flags do); a ``labels`` dict knows its own keys only.
        """
        if isinstance(self.labels, dict):
            return {w: float(x) for w, x in self.labels.items()}
        named = set(self.labels) if self.labels is not None else {self.label}
        named |= {BY_WIRE[w].parent for w in named if w in BY_WIRE}
        return {w: float(w in named) for w in WIRE_NAMES}

    def applied(self) -> list[str]:
        """Categories that apply (target >= 0.5), in canonical order."""
        t = self.targets()
        return [w for w in WIRE_NAMES if t.get(w, 0.0) >= 0.5]


@dataclass
class BatchStats:
    rows: int = 0
    no_category: int = 0  # rows where no category applies
    categories: Counter[str] = field(default_factory=Counter)  # rows where it applies
    severity: Counter[str] = field(default_factory=Counter)  # rows per severity value

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "no_category": self.no_category,
            "no_category_share": round(self.no_category / self.rows, 4) if self.rows else 0.0,
            "categories": {w: self.categories[w] for w in WIRE_NAMES if self.categories[w]},
            "severity": dict(self.severity),
        }


@dataclass
class Report:
    file: str
    against: str | None
    max_chars: int
    near_threshold: float
    lines: int = 0  # non-blank lines read
    rows: list[tuple[int, Row]] = field(default_factory=list)  # (line, row) that passed
    findings: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {k: [] for k in KINDS}
    )
    batches: dict[str, BatchStats] = field(default_factory=dict)
    review: list[dict[str, Any]] | None = None  # rows to review, with --score

    @property
    def failed(self) -> bool:
        return any(self.findings[k] for k in FAILING_KINDS)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "against": self.against,
            "max_chars": self.max_chars,
            "near_threshold": self.near_threshold,
            "lines": self.lines,
            "valid_rows": len(self.rows),
            "counts": {k: len(v) for k, v in self.findings.items()},
            "findings": {k: v[:REPORT_LIMIT] for k, v in self.findings.items()},
            "batches": {name: b.to_json() for name, b in self.batches.items()},
        }
        if self.review is not None:
            out["review"] = self.review
        return out


def normalize(text: str) -> str:
    """Duplicate key: NFKC, case-folded, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _schema_errors(e: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "row", "message": err["msg"]}
        for err in e.errors()
    ]


def read_rows(path: Path, report: Report) -> None:
    """Parse every non-blank line of ``path`` into ``report.rows`` or a failing finding."""
    with path.open("rb") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                report.findings["invalid_json"].append({"line": line, "error": str(e)})
                continue
            try:
                row = Row.model_validate(obj)
            except ValidationError as e:
                report.findings["schema"].append({"line": line, "errors": _schema_errors(e)})
                continue
            report.rows.append((line, row))
            if row.model_extra:
                report.findings["extra_keys"].append({"line": line, "keys": list(row.model_extra)})


def read_eval_texts(path: Path) -> dict[str, int]:
    """Normalised text -> first line, for an evaluation file in either training layout
    (``text`` or ``prompt``, see ``training.data.parse_row``), empty texts left out;
    ValueError names a bad line."""
    keys: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = parse_row(json.loads(raw))[0]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{path} line {line}: not a labelled row ({e!r})") from e
            if text.strip():
                keys.setdefault(normalize(text), line)
    return keys


# --- near-duplicates: MinHash signatures + LSH banding -------------------------------------


def _perm_params(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and offsets of the multiply-shift hash family, one per permutation."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def _chunk_signatures(texts: Sequence[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    padded = [t.ljust(SHINGLE_CHARS) for t in texts]
    joined = "".join(padded).encode("utf-32-le", "surrogatepass")
    codes = np.frombuffer(joined, dtype=np.uint32).astype(np.uint64)
    n = len(codes) - SHINGLE_CHARS + 1
    grams = np.zeros(n, np.uint64)  # polynomial hash of the 5-gram starting at each position
    for k in range(SHINGLE_CHARS):
        grams *= np.uint64(0x100000001B3)
        grams += codes[k : k + n]
    lengths = np.array([len(t) for t in padded])
    counts = lengths - SHINGLE_CHARS + 1  # 5-grams that stay inside each text
    firsts = np.cumsum(counts) - counts
    positions = np.repeat(np.cumsum(lengths) - lengths - firsts, counts) + np.arange(counts.sum())
    hashed = np.multiply.outer(a, grams[positions])  # in place from here: one buffer
    hashed += b[:, None]
    hashed >>= np.uint64(32)
    return np.minimum.reduceat(hashed, firsts, axis=1).T.astype(np.uint32)


def minhash_signatures(texts: Sequence[str], num_perm: int = NUM_PERM) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of each text's set of character
    5-grams (texts shorter than 5 are padded with spaces); deterministic across runs."""
    a, b = _perm_params(num_perm)
    out = np.empty((len(texts), num_perm), np.uint32)
    start = 0
    while start < len(texts):
        stop, chars = start + 1, len(texts[start])
        while stop < len(texts) and chars + len(texts[stop]) <= CHUNK_CHARS:
            chars += len(texts[stop])
            stop += 1
        out[start:stop] = _chunk_signatures(texts[start:stop], a, b)
        start = stop
    return out


def band_rows(num_perm: int, threshold: float) -> int:
    """Rows per LSH band: the most (fewest candidates) that still makes a pair of Jaccard
    ``threshold`` a candidate with probability >= LSH_RECALL."""
    ok = [
        r for r in range(1, num_perm + 1) if 1 - (1 - threshold**r) ** (num_perm // r) >= LSH_RECALL
    ]
    return max(ok, default=1)


def similar_pairs(
    signatures: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` with estimated Jaccard >= ``threshold``, and that estimate.

    Rows that share one LSH band are candidates (sort by band hash, compare neighbours up
    to BUCKET_WINDOW apart), so the cost grows with rows x bands, not rows squared; each
    candidate is then verified on its full signature.
    """
    n, num_perm = signatures.shape
    rows = band_rows(num_perm, threshold)
    mix = _perm_params(rows, seed=1)[0]
    found = []
    for start in range(0, num_perm // rows * rows, rows):
        keys = (signatures[:, start : start + rows].astype(np.uint64) * mix).sum(axis=1)
        order = np.argsort(keys, kind="stable")  # ties keep index order: i < j below
        keys = keys[order]
        for d in range(1, min(BUCKET_WINDOW, n - 1) + 1):
            same = np.flatnonzero(keys[d:] == keys[:-d])
            if not same.size:  # sorted: no equal keys d apart means none further apart
                break
            found.append(order[same] * n + order[same + d])
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    pairs = np.unique(np.concatenate(found))
    i, j = pairs // n, pairs % n
    sim = (signatures[i] == signatures[j]).mean(axis=1)
    keep = sim >= threshold
    return i[keep], j[keep], sim[keep]


# --- the checks ------------------------------------------------------------------------------


def _text_checks(report: Report, eval_keys: dict[str, int]) -> None:
    """Empty, over-long, duplicate, near-duplicate and leaking rows."""
    first_line: dict[str, int] = {}  # normalised text -> its first line
    for line, row in report.rows:
        if not row.text.strip():
            report.findings["empty_text"].append({"line": line})
            continue
        if len(row.text) > report.max_chars:
            report.findings["over_long"].append({"line": line, "chars": len(row.text)})
        key = normalize(row.text)
        if key in first_line:
            report.findings["duplicate"].append({"line": line, "of_line": first_line[key]})
        else:
            first_line[key] = line

    # Near matches among distinct texts (one per exact-duplicate group) and new eval texts.
    keys = list(first_line)
    eval_only = [k for k in eval_keys if k not in first_line]
    sig = minhash_signatures(keys + eval_only)
    near_of: dict[int, tuple[int, float]] = {}  # dataset line -> (earliest similar line, sim)
    leak_of: dict[str, tuple[int, float]] = {}  # dataset key -> (first similar eval line, sim)
    # pairs come sorted by (i, j), and keys in line order: the first match is the earliest
    for i, j, sim in zip(*similar_pairs(sig, report.near_threshold), strict=True):
        if j < len(keys):
            near_of.setdefault(first_line[keys[j]], (first_line[keys[i]], float(sim)))
        elif i < len(keys):
            leak_of.setdefault(keys[i], (eval_keys[eval_only[j - len(keys)]], float(sim)))
    for line, (of, sim) in sorted(near_of.items()):
        report.findings["near_duplicate"].append(
            {"line": line, "of_line": of, "similarity": round(sim, 3)}
        )

    for line, row in report.rows:
        key = normalize(row.text)
        if key in eval_keys:
            report.findings["leak_exact"].append({"line": line, "eval_line": eval_keys[key]})
        elif key in leak_of:
            eval_line, sim = leak_of[key]
            report.findings["leak_near"].append(
                {"line": line, "eval_line": eval_line, "similarity": round(sim, 3)}
            )


def _balance(report: Report) -> None:
    for _, row in report.rows:
        stats = report.batches.setdefault(row.batch or NO_BATCH, BatchStats())
        stats.rows += 1
        applied = row.applied()
        stats.categories.update(applied)
        stats.no_category += not applied
        if row.severity is not None:
            stats.severity[str(row.severity)] += 1


def check_dataset(
    path: Path,
    against: Path | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    near_threshold: float = DEFAULT_NEAR_THRESHOLD,
) -> Report:
    """Run every check on ``path`` (and leakage into ``against``); see the module doc.

    ``max_chars``: longer texts are flagged (the server refuses them). ``near_threshold``:
    estimated character-5-gram Jaccard from which two texts count as near-duplicates.
    """
    report = Report(str(path), str(against) if against else None, max_chars, near_threshold)
    read_rows(path, report)
    _text_checks(report, read_eval_texts(against) if against else {})
    _balance(report)
    return report


# --- --score: disagreement with a served model ---------------------------------------------


class ScoreError(RuntimeError):
    """The moderation server could not be reached or did not answer 200."""


def post_moderations(
    url: str, texts: list[str], api_key: str | None, model: str | None
) -> list[dict[str, Any]]:
    """POST one OpenAI ``/v1/moderations`` request; its ``results``, one per text."""
    body: dict[str, Any] = {"input": texts, **({"model": model} if model else {})}
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    endpoint = url.rstrip("/") + "/v1/moderations"
    request = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            results = json.load(resp)["results"]
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        raise ScoreError(f"{endpoint} answered HTTP {e.code}: {detail}") from e
    except OSError as e:  # URLError, refused or reset connections, timeouts
        raise ScoreError(f"cannot reach {endpoint}: {getattr(e, 'reason', e)}") from e
    except (ValueError, KeyError) as e:
        raise ScoreError(f"{endpoint}: not a moderation answer ({e!r})") from e
    if len(results) != len(texts):
        raise ScoreError(f"{endpoint} answered {len(results)} results for {len(texts)} inputs")
    return list(results)


def disagreement(row: Row, result: dict[str, Any]) -> tuple[float, str] | None:
    """Max over the row's known categories that the model scores of |label - score|, and
    the category where it peaks; None when no category is both known and scored."""
    scores = result["category_scores"]
    unscored = set(result.get("unscored_categories", ()))
    gaps = [
        (abs(t - float(scores[w])), w)
        for w, t in row.targets().items()
        if w in scores and w not in unscored
    ]
    return max(gaps) if gaps else None


def _label_text(row: Row) -> str:
    return ",".join(row.applied()) or "no category"


def score_rows(
    report: Report,
    url: str,
    review: int,
    api_key: str | None = None,
    model: str | None = None,
) -> None:
    """Score the rows that the server accepts (non-empty, within ``max_chars``) and set
    ``report.review`` to the ``review`` rows that disagree most with their label."""
    rows = [
        (line, row)
        for line, row in report.rows
        if row.text.strip() and len(row.text) <= report.max_chars
    ]
    ranked: list[tuple[tuple[float, str], int, Row, tuple[str, float]]] = []
    with tqdm(total=len(rows), desc="scoring", unit="row", disable=None) as bar:
        for start in range(0, len(rows), SCORE_BATCH_INPUTS):
            batch = rows[start : start + SCORE_BATCH_INPUTS]
            results = post_moderations(url, [r.text for _, r in batch], api_key, model)
            for (line, row), result in zip(batch, results, strict=True):
                gap = disagreement(row, result)
                if gap is not None:
                    top = max(result["category_scores"].items(), key=lambda kv: kv[1])
                    ranked.append((gap, line, row, top))
            bar.update(len(batch))
    ranked.sort(key=lambda x: (-x[0][0], x[1]))
    report.review = [
        {
            "line": line,
            "disagreement": round(gap, 4),
            "category": category,
            "label": _label_text(row),
            "model_top": top_category,
            "model_score": round(float(top_score), 4),
            "text": row.text[:REVIEW_TEXT_CHARS],
        }
        for (gap, category), line, row, (top_category, top_score) in ranked[:review]
    ]


# --- output ----------------------------------------------------------------------------------


def _lines_preview(findings: list[dict[str, Any]], n: int = 5) -> str:
    shown = ", ".join(str(f["line"]) for f in findings[:n])
    return shown + (", ..." if len(findings) > n else "")


def format_report(report: Report, details: int = 10) -> str:
    """The terminal summary: checks, up to ``details`` failing lines, balance, review."""
    f = report.findings
    titles = dict(KINDS)
    titles["over_long"] += f" (> {report.max_chars} chars)"
    titles["near_duplicate"] += f" (Jaccard >= {report.near_threshold:.2f})"
    against = f" against {report.against}" if report.against else ""
    out = [f"{report.file}{against}: {report.lines} rows, {len(report.rows)} pass the schema", ""]
    checks = [["check", "rows", "lines"]]
    for kind, title in titles.items():
        if kind.startswith("leak_") and not report.against:
            continue
        checks.append([title, str(len(f[kind])), _lines_preview(f[kind])])
    # the last row, keys outside the schema, names the keys instead of lines
    checks[-1][2] = ", ".join(sorted({k for x in f["extra_keys"] for k in x["keys"]}))
    out += aligned(checks, right=(1,))

    failing = [(x["line"], x) for kind in FAILING_KINDS for x in f[kind]]
    if failing:
        out += ["", f"failing lines (first {details}):"]
        for line, x in sorted(failing, key=lambda p: p[0])[:details]:
            errors = x.get("errors") or [{"field": "JSON", "message": x.get("error", "")}]
            out += [f"  line {line}: {e['field']}: {e['message']}" for e in errors]

    if report.batches:
        names = list(report.batches)
        stats = [report.batches[n] for n in names]
        rows = [["batch", *names], ["rows", *(str(s.rows) for s in stats)]]
        rows.append(
            ["no category", *(f"{s.no_category} ({s.no_category / s.rows:.0%})" for s in stats)]
        )
        rows += [
            [w, *(str(s.categories[w]) for s in stats)]
            for w in WIRE_NAMES
            if any(s.categories[w] for s in stats)
        ]
        severities = sorted(
            {v for s in stats for v in s.severity},
            key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v),  # 2 before 10
        )
        rows += [[f"severity {v}", *(str(s.severity[v]) for s in stats)] for v in severities]
        balance = aligned(rows, right=range(1, len(rows[0])))
        out += ["", "label balance (rows where a category applies):", *balance]

    if report.review is not None:
        out += ["", f"rows to review ({len(report.review)} most disagreeing with the model):"]
        rows = [["line", "gap", "on", "label", "model top", "text"]]
        rows += [
            [
                str(r["line"]),
                f"{r['disagreement']:.2f}",
                r["category"],
                r["label"],
                f"{r['model_top']} {r['model_score']:.2f}",
                " ".join(r["text"].split()),
            ]
            for r in report.review
        ]
        out += aligned(rows, right=(0, 1))
    return "\n".join(out)


# --- command line ----------------------------------------------------------------------------


def _threshold(v: str) -> float:
    x = float(v)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError("must lie in (0, 1]")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modserve dataset",
        description="Check a moderation dataset (JSONL); see training/dataset_check.py.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="schema, duplicates, leakage, balance (+ --score)")
    c.add_argument("file", type=Path, help="the dataset, one JSON object per line")
    c.add_argument("--against", type=Path, metavar="EVAL.jsonl", help="rows must not leak into it")
    c.add_argument(
        "--max-chars",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_CHARS,
        help="flag longer texts (default: the server's MODSERVE_MAX_INPUT_CHARS)",
    )
    c.add_argument(
        "--near-threshold",
        type=_threshold,
        metavar="J",
        default=DEFAULT_NEAR_THRESHOLD,
        help="estimated 5-gram Jaccard from which texts are near-duplicates",
    )
    c.add_argument("--json", type=Path, metavar="PATH", help="write the full report here")
    c.add_argument("--score", metavar="URL", help="a modserve (or OpenAI-compatible) server")
    c.add_argument("--api-key", metavar="KEY", help="bearer key for --score")
    c.add_argument("--model", metavar="NAME", help="the `model` --score asks for")
    c.add_argument("--review", type=int, default=20, metavar="N", help="rows to list, --score")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    for path in (a.file, a.against):
        if path is not None and not path.is_file():
            sys.stderr.write(f"modserve dataset check: no such file: {path}\n")
            return 2
    try:
        report = check_dataset(a.file, a.against, a.max_chars, a.near_threshold)
    except ValueError as e:  # a bad --against file
        sys.stderr.write(f"modserve dataset check: {e}\n")
        return 2
    if a.score:
        try:
            score_rows(report, a.score, a.review, a.api_key, a.model)
        except ScoreError as e:
            sys.stderr.write(f"modserve dataset check --score: {e}\n")
            return 2
    print(format_report(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
