from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# int8 models run eager in tests (same scores, no 30-70 s compile per load); the compiled
# path has its own tests in tests/unit/model/test_quantize.py.
os.environ.setdefault("MODSERVE_INT8_COMPILE", "0")
# Servers in tests load torch float32 without timing backends at start (a second or more per
# server); tests/integration/test_backend_server.py runs the timed choice itself. ONNX graphs
# go to a directory of this run, not the user's cache.
os.environ.setdefault("MODSERVE_BACKEND_PROBE_S", "0")
if "MODSERVE_ONNX_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["MODSERVE_ONNX_CACHE_DIR"] = tempfile.mkdtemp(prefix="modserve-test-onnx-")

import torch

# Without a GPU, Triton kernels run in the CPU interpreter; must precede `import triton`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.helpers import make_tiny_model_repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("model_repo")
    make_tiny_model_repo(repo, "tiny")
    return repo
