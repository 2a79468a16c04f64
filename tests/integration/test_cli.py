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


def _modserve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_umbrella_command_lists_and_dispatches_every_command(tmp_path: Path):
    out = _modserve("--help")
    assert out.returncode == 0, out.stderr
    for command in ("serve", "classify", "train", "eval", "calibrate", "export", "bench"):
        assert f"  {command} " in out.stdout
    wrong = _modserve("trian")
    assert wrong.returncode == 2 and "usage: modserve" in wrong.stderr
    train = _modserve("train", "--help")
    assert train.returncode == 0 and "modserve train" in train.stdout
    # Outside the checkout too: benchmarks are installed with the package.
    bench = _modserve("bench", "--help", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert "--servers" in bench.stdout
