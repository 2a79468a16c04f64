"""`modserve dataset check`: schema, duplicates, leakage, balance, JSON report and --score."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.categories import WIRE_NAMES
from training import dataset_check as DC
from training.cli import main as training_main

ROOT = Path(__file__).resolve().parents[3]

# ~280 characters: changing one word keeps the 5-gram Jaccard at ~0.96, well over 0.9.
LONG = (
    "Everyone from that village is a filthy parasite and they should all be driven out of "
    "our town before the summer festival begins next week. Nobody wants them near the "
    "market, the school or the river, and the council should say so in public at the "
    "meeting on Thursday evening."
)
LONG_NEAR = LONG.replace("parasite", "parasites")
CAKE = "A recipe for lemon cake with three eggs, a cup of sugar and the zest of two lemons."


def _write(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _check(tmp_path: Path, rows: Sequence[object], *args: str) -> tuple[int, dict]:
    """Run the command on ``rows``; its exit code and JSON report."""
    data = _write(tmp_path / "data.jsonl", rows)
    report = tmp_path / "report.json"
    code = DC.main(["check", str(data), "--json", str(report), *args])
    return code, json.loads(report.read_text())


def _lines(report: dict, kind: str) -> list[int]:
    return [f["line"] for f in report["findings"][kind]]


def test_schema_failures_exit_1_and_name_line_and_field(tmp_path, capsys):
    rows = [
        {"text": "fine", "label": "safe"},
        {"label": "hate"},  # 2: no text
        {"text": "buy cheap pills", "label": "spam"},  # 3: unknown label
        {"text": 42, "label": "hate"},  # 4: wrong type
        {"text": "x", "labels": ["hate", "scam"]},  # 5: unknown label in the list
        "{not json",  # 6
        {"text": "y"},  # 7: no label at all
        {"text": "z", "label": "hate", "labels": ["hate"]},  # 8: both
        {"text": "w", "labels": {"hate": 2}},  # 9: out of [0, 1]
        {"text": "v", "label": "hate", "severity": 2.5},  # 10: severity neither str nor int
    ]
    code, report = _check(tmp_path, rows)
    assert code == 1
    assert _lines(report, "invalid_json") == [6]
    fields = {f["line"]: [e["field"] for e in f["errors"]] for f in report["findings"]["schema"]}
    assert list(fields) == [2, 3, 4, 5, 7, 8, 9, 10]
    assert fields[2] == ["text"] and fields[3] == ["label"] and fields[4] == ["text"]
    assert fields[5] == ["labels"] and fields[9] == ["labels"]
    assert fields[7] == ["row"] and fields[8] == ["row"]
    assert all(f.startswith("severity") for f in fields[10])
    assert report["valid_rows"] == 1 and report["lines"] == 10
    out = capsys.readouterr().out
    assert "line 3: label: " in out and "'spam'" in out
    assert "line 5: labels: " in out and "'scam'" in out
    assert "line 6: JSON: " in out


def test_clean_file_exits_0_and_reports_extra_keys_without_failing(tmp_path, capsys):
    rows = [
        {"text": "hello there", "label": "safe", "source": "chat"},
        {"text": "I will hurt you", "labels": {"violence": 1}, "source": "chat"},
    ]
    code, report = _check(tmp_path, rows)
    assert code == 0
    assert report["findings"]["extra_keys"] == [
        {"line": 1, "keys": ["source"]},
        {"line": 2, "keys": ["source"]},
    ]
    assert sum(report["counts"].values()) == 2  # nothing but the extra keys
    out = capsys.readouterr().out
    assert "keys outside the schema" in out and "source" in out


BALANCE_ROWS = [
    {"text": "The weather in Lisbon is lovely in May.", "label": "safe", "batch": "a",
     "severity": 0},
    {"text": "I will find you and hurt you badly.", "label": "violence", "batch": "a",
     "severity": "high"},
    {"text": "the weather in  LISBON is lovely in may.", "label": "none", "batch": "a",
     "severity": 0},
    {"text": LONG, "labels": ["hate", "harassment"], "batch": "b", "severity": 2},
    {"text": LONG_NEAR, "labels": {"hate": 1, "violence": 0}, "batch": "b"},
    {"text": CAKE, "labels": {"sexual": 0, "hate": 0.2}, "batch": "b"},
    {"text": "Ｔｈｅ weather in Lisbon is lovely in May.", "label": "safe"},  # full width: NFKC
]  # fmt: skip


def test_exact_and_near_duplicates_are_found_and_different_rows_are_not(tmp_path):
    code, report = _check(tmp_path, BALANCE_ROWS)
    assert code == 0
    assert report["findings"]["duplicate"] == [
        {"line": 3, "of_line": 1},
        {"line": 7, "of_line": 1},
    ]
    [near] = report["findings"]["near_duplicate"]
    assert (near["line"], near["of_line"]) == (5, 4) and near["similarity"] >= 0.9
    # the threshold is honoured: the same pair is not "near" at 0.99
    _, strict = _check(tmp_path, BALANCE_ROWS, "--near-threshold", "0.99")
    assert strict["findings"]["near_duplicate"] == []


def test_balance_and_severity_per_batch(tmp_path, capsys):
    _, report = _check(tmp_path, BALANCE_ROWS)
    assert report["batches"] == {
        "a": {
            "rows": 3,
            "no_category": 2,
            "no_category_share": 0.6667,
            "categories": {"violence": 1},
            "severity": {"0": 2, "high": 1},
        },
        "b": {
            "rows": 3,
            "no_category": 1,  # the cake: hate 0.2 does not apply
            "no_category_share": 0.3333,
            "categories": {"harassment": 1, "hate": 2},
            "severity": {"2": 1},
        },
        DC.NO_BATCH: {
            "rows": 1,
            "no_category": 1,
            "no_category_share": 1.0,
            "categories": {},
            "severity": {},
        },
    }
    table = capsys.readouterr().out
    assert any(line.split() == ["hate", "0", "2", "0"] for line in table.splitlines())
    assert any(line.split()[:3] == ["no", "category", "2"] for line in table.splitlines())


def test_leakage_into_the_eval_file_exact_and_near(tmp_path):
    eval_file = _write(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "I WILL FIND YOU AND HURT YOU BADLY.", "V": 1},  # the eval layout
            {"text": LONG.replace("village", "vilage"), "labels": {"hate": 1}},
            {"text": "Trains to Porto leave every hour.", "labels": {}},
        ],
    )
    rows = [
        {"text": CAKE, "label": "safe"},
        {"text": "I will find you and hurt you badly.", "label": "violence"},
        {"text": LONG, "label": "hate"},
    ]
    code, report = _check(tmp_path, rows, "--against", str(eval_file))
    assert code == 0
    assert report["findings"]["leak_exact"] == [{"line": 2, "eval_line": 1}]
    [near] = report["findings"]["leak_near"]
    assert (near["line"], near["eval_line"]) == (3, 2)


def test_empty_and_over_long_texts(tmp_path):
    rows = [
        {"text": "   ", "label": "safe"},
        {"text": "x" * 21, "label": "safe"},
        {"text": "x" * 20, "label": "safe"},
    ]
    code, report = _check(tmp_path, rows, "--max-chars", "20")
    assert code == 0
    assert report["findings"]["empty_text"] == [{"line": 1}]
    assert report["findings"]["over_long"] == [{"line": 2, "chars": 21}]
    assert report["max_chars"] == 20


def test_default_max_chars_is_the_servers():
    from serving.config import Settings

    assert DC.build_parser().parse_args(["check", "f"]).max_chars == Settings().max_input_chars


def test_json_report_lists_at_most_report_limit_but_counts_all(tmp_path, monkeypatch):
    monkeypatch.setattr(DC, "REPORT_LIMIT", 2)
    rows = [{"text": "same text", "label": "safe"} for _ in range(4)]
    _, report = _check(tmp_path, rows)
    assert report["counts"]["duplicate"] == 3
    assert report["findings"]["duplicate"] == [{"line": 2, "of_line": 1}, {"line": 3, "of_line": 1}]
    assert report["file"].endswith("data.jsonl") and report["near_threshold"] == 0.9


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert DC.main(["check", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_similar_pairs_finds_planted_pairs_among_random_texts():
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    texts = ["".join(rng.choice(letters, 120)) for _ in range(2000)]
    planted = {(i, 2000 + k) for k, i in enumerate(range(0, 2000, 100))}
    texts += [texts[i][:-2] + "zz" for i, _ in sorted(planted)]
    i, j, sim = DC.similar_pairs(DC.minhash_signatures(texts), 0.9)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == planted
    assert (sim >= 0.9).all()


def test_band_rows_keeps_the_recall_at_the_threshold():
    r = DC.band_rows(128, 0.9)
    assert 1 - (1 - 0.9**r) ** (128 // r) >= DC.LSH_RECALL
    assert 1 - (1 - 0.9 ** (r + 1)) ** (128 // (r + 1)) < DC.LSH_RECALL


# --- --score against a local server with fixed scores ----------------------------------------


class _Moderations(BaseHTTPRequestHandler):
    """violence 0.9 for texts with "hurt", 0.05 for everything else; illicit unscored."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        server.requests.append((self.path, self.headers.get("authorization"), body))
        payload: dict[str, Any]
        if server.status != 200:
            payload = {"error": {"message": "model is loading"}}
        else:
            payload = {
                "results": [
                    {
                        "category_scores": {
                            w: 0.9 if w == "violence" and "hurt" in t else 0.05 for w in WIRE_NAMES
                        },
                        "unscored_categories": ["illicit", "illicit/violent"],
                    }
                    for t in body["input"]
                ]
            }
        data = json.dumps(payload).encode()
        self.send_response(server.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def moderation_server() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Moderations)
    server.requests, server.status = [], 200
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


SCORED_ROWS = [
    {"text": "Have a lovely day.", "label": "safe"},
    {"text": "I will hurt you.", "label": "safe"},  # the model disagrees: 0.9 on violence
    {"text": "I will hurt you tomorrow.", "label": "violence"},  # 0.1
    {"text": "Selling stolen cards here.", "label": "illicit"},  # unscored: not a 0.95 gap
    *({"text": f"Row {k} of a long list of benign filler rows.", "label": "safe"}
      for k in range(35)),
]  # fmt: skip


def test_score_lists_the_most_disagreeing_row_first(tmp_path, moderation_server, capsys):
    code, report = _check(
        tmp_path, SCORED_ROWS, "--score", moderation_server.url, "--api-key", "k",
        "--model", "m", "--review", "3",
    )  # fmt: skip
    assert code == 0
    first, second, third = report["review"]
    assert first == {
        "line": 2,
        "disagreement": 0.9,
        "category": "violence",
        "label": "no category",
        "model_top": "violence",
        "model_score": 0.9,
        "text": "I will hurt you.",
    }
    assert (second["line"], second["disagreement"]) == (3, 0.1)
    assert (third["line"], third["disagreement"]) == (1, 0.05)  # ties: earliest line first
    requests = moderation_server.requests
    assert [len(body["input"]) for _, _, body in requests] == [32, 7]
    assert {(path, auth, body["model"]) for path, auth, body in requests} == {
        ("/v1/moderations", "Bearer k", "m")
    }
    out = capsys.readouterr().out
    assert "rows to review" in out and "I will hurt you." in out


def test_score_server_error_exits_2_with_the_status(tmp_path, moderation_server, capsys):
    moderation_server.status = 503
    data = _write(tmp_path / "data.jsonl", SCORED_ROWS[:2])
    assert DC.main(["check", str(data), "--score", moderation_server.url]) == 2
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "model is loading" in err


def test_list_labels_know_every_category_and_imply_parents():
    targets = DC.Row(text="t", label="hate/threatening").targets()
    assert set(targets) == set(WIRE_NAMES)
    assert {w for w, t in targets.items() if t} == {"hate", "hate/threatening"}
    assert not any(DC.Row(text="t", label="safe").targets().values())


def test_disagreement_uses_known_scored_categories_only():
    row = DC.Row(text="t", labels={"hate": 1})  # violence is unknown, illicit unscored
    result: dict[str, Any] = {"category_scores": {"hate": 0.7, "violence": 0.99, "illicit": 0.0}}
    assert DC.disagreement(row, result) == pytest.approx((0.3, "hate"))
    result["unscored_categories"] = ["hate"]
    assert DC.disagreement(row, result) is None


def test_dispatch_through_modserve_and_python_m(tmp_path):
    from modserve.cli import main as modserve_main
    from modserve.cli import usage

    bad = _write(tmp_path / "bad.jsonl", [{"text": "x", "label": "spam"}])
    good = _write(tmp_path / "good.jsonl", [{"text": "x", "label": "hate"}])
    assert "dataset" in usage()
    assert modserve_main(["dataset", "check", str(bad)]) == 1
    assert training_main(["dataset", "check", str(good)]) == 0
    run = subprocess.run(
        [sys.executable, "-m", "training.dataset_check", "check", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "line 1: label:" in run.stdout
