"""``modserve classify`` prints the OpenAI moderation JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_classify_prints_moderation_json(tiny_repo: Path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "classify",
            "hello",
            "second text",
            "--model-repo",
            str(tiny_repo),
            "--model",
            "tiny",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body = json.loads(out.stdout)
    assert body["model"] == "tiny" and len(body["results"]) == 2
    assert set(body["results"][0]) == {
        "flagged",
        "categories",
        "category_scores",
        "category_applied_input_types",
    }


def test_serve_help_lists_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--grpc-port",
        "--model-repo",
        "--model",
        "--device",
        "--dtype",
    ):
        assert flag in out
