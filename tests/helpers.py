"""Tiny deterministic model directories and a real server process for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, Future
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import torch
from transformers import BertConfig, BertModel

from serving.model.load import ModerationModel, packaged_encoder_dir, save_weights
from serving.model.repo_config import DerivedRule, ModelConfig, save_model_config
from training.defaults import DEFAULT_LABELS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
TINY_LABELS = list(DEFAULT_LABELS)


def copy_packaged_tokenizer(dst: Path) -> None:
    """The real MiniLM tokenizer files into ``dst`` (tiny models share its vocabulary)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        src = packaged_encoder_dir() / f
        if src.exists():
            shutil.copy(src, dst / f)


TINY_BERT = dict(
    vocab_size=30522,  # the MiniLM vocabulary, so the real tokenizer fits
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
)


def tiny_bert(**overrides: int) -> BertModel:
    """A random-weight BERT (hidden 32, 2 layers; ``overrides`` change any size)."""
    return BertModel(BertConfig(**{**TINY_BERT, **overrides}), add_pooling_layer=False)


def make_tiny_model_repo(
    repo: Path, name: str = "tiny", seed: int = 0, max_length_tokens: int = 64
) -> Path:
    """A random-weight BERT (hidden 32, 2 layers) with the real MiniLM tokenizer.

    Random weights are fine in tests (never in model_repo/). The classifier
    bias is spread so that some categories score high and others low.
    """
    torch.manual_seed(seed)
    model_dir = repo / name
    vdir = model_dir / "1"
    copy_packaged_tokenizer(vdir)
    cfg = ModelConfig(
        name=name,
        labels=TINY_LABELS,
        max_length_tokens=max_length_tokens,
        chunk_stride_tokens=8,
        buckets_tokens=[16, 32, 64],
        thresholds={"hate": 0.5, "violence": 0.3},
        derived={
            "violence/graphic": DerivedRule(parent="violence", gate_regex=r"\bblood\b"),
            "sexual/minors": DerivedRule(parent="sexual", gate_regex=r"\bchild\b"),
            "self-harm/instructions": DerivedRule(parent="self-harm", gate_regex=r"\bhow to\b"),
        },
    )
    model = ModerationModel(tiny_bert(), len(TINY_LABELS), cfg)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.linspace(-3, 3, len(TINY_LABELS)))
    save_weights(model, vdir, torch.float32)
    save_model_config(cfg, model_dir)
    return model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``modserve serve`` in a subprocess on a loopback port; waits for /ready."""

    def __init__(self, model_repo: Path, model: str = "tiny", **env: str) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "MODSERVE_MODEL_REPO": str(model_repo),
            "MODSERVE_MODEL": model,
            "MODSERVE_HOST": "127.0.0.1",
            "MODSERVE_PORT": str(self.port),
            "MODSERVE_CPU_THREADS": "1",
            "MODSERVE_GRPC_PORT": str(self.grpc_port),
            **env,
        }
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full one
        # (64 KB of log) would block the server.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """Everything the server has printed so far (stdout and stderr)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("server did not become ready")

    def wait_for_metric(self, line: str, timeout_s: float = 30.0) -> None:
        """Poll /metrics until it shows ``line`` (e.g. a queue gauge's value)."""
        t_end = time.monotonic() + timeout_s
        while line not in httpx.get(self.base + "/metrics").text:
            if time.monotonic() > t_end:
                raise TimeoutError(f"/metrics never showed {line!r}")
            time.sleep(0.005)

    def post_queued(self, pool: Executor, text: str, queued: str) -> Future[httpx.Response]:
        """POST ``text`` to /v1/moderations from ``pool``; return once /metrics shows the
        ``queued`` line (the request waits in the batcher)."""
        answer = pool.submit(
            httpx.post, self.base + "/v1/moderations", json={"input": text}, timeout=30
        )
        self.wait_for_metric(queued)
        return answer

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@asynccontextmanager
async def unloaded_app_client(repo: Path, model: str = "tiny") -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the HTTP app over a registry that never starts loading."""
    from serving.api.http import create_http_app
    from serving.config import Settings
    from serving.engine.metrics import Metrics
    from serving.engine.registry import ModelRegistry

    registry = ModelRegistry(Settings(model_repo=repo, model=model), Metrics())
    transport = httpx.ASGITransport(app=create_http_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client
