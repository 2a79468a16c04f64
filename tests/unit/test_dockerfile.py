"""The container image's recipe (no Docker daemon in CI): what it promises, checked on text."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def runtime_stage() -> str:
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert len(stages) == 3, "a build stage and a runtime stage"
    return stages[-1]


def test_runtime_stage_is_unprivileged_healthchecked_and_without_build_tools():
    stage = runtime_stage()
    users = re.findall(r"^USER (\S+)", stage, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", stage, flags=re.M)
    assert "build-essential" not in stage and "COPY --from=build /opt/venv" in stage
    assert "MODSERVE_HOST=0.0.0.0" in stage  # a container must be reachable from outside


def test_image_ray_matches_the_charts_ray_version():
    values = yaml.safe_load((ROOT / "helm" / "modserve" / "values.yaml").read_text())
    pins = set(re.findall(r"ray\[serve\]==([0-9.]+)", (ROOT / "Dockerfile").read_text()))
    assert pins == {values["rayVersion"]}


def test_build_context_leaves_out_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "serving/_proto"} <= ignored
