"""Start each server under test as a subprocess on a free loopback port; wait; stop.

Kinds: ``modserve`` (``python -m serving.cli serve``, defaults: the backend and dtype timed
fastest at start), ``modserve-torch`` (torch float32 pinned), ``modserve-int8`` (torch
``MODSERVE_DTYPE=int8``: compiled W8A8 encoder, CPU), ``modserve-bf16`` (torch bfloat16,
CPU), ``modserve-ort-int8`` (ONNX Runtime int8, CPU), ``modserve-ray``
(``serving.deployments.build_app`` on a local Ray), ``naive`` (peer a), ``ray-batch``
(peer b), ``infinity`` (peer c, own virtualenv; ``infinity-onnx``: its optimum engine,
ONNX Runtime). Every server loads the same model folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

RAY_KINDS = ("modserve-ray", "ray-batch")
# Single-process modserve kinds and what they set: ``modserve`` = the defaults (backend and
# dtype timed at start: serving.model.backend_choice), the others pin one path.
MODSERVE_ENV_BY_KIND: dict[str, dict[str, str]] = {
    "modserve": {},
    "modserve-torch": {"MODSERVE_BACKEND": "torch", "MODSERVE_DTYPE": "float32"},
    "modserve-int8": {"MODSERVE_BACKEND": "torch", "MODSERVE_DTYPE": "int8"},
    "modserve-bf16": {"MODSERVE_BACKEND": "torch", "MODSERVE_DTYPE": "bfloat16"},
    "modserve-ort-int8": {"MODSERVE_BACKEND": "onnxruntime", "MODSERVE_DTYPE": "int8"},
}
KINDS = (
    "modserve", "modserve-torch", "modserve-int8", "modserve-bf16", "modserve-ort-int8",
    "modserve-ray", "naive", "ray-batch", "infinity", "infinity-onnx",
)  # fmt: skip
READY_TIMEOUT_S = 240.0  # Ray start + model load + warm-up on a busy 2-core machine
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    grpc_url: str | None = None
    model_name: str = ""
    ready_path: str = "/ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until the ready route answered 200; raises with the log tail otherwise."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.kind} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL it after ``STOP_TIMEOUT_S``."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_server(kind: str, model_dir: Path, env: dict[str, str] | None = None) -> Server:
    """Launch ``kind`` serving ``model_dir`` (a model_repo folder) on 127.0.0.1."""
    model_dir = model_dir.resolve()
    port = free_port()
    # Same torch intra-op threads everywhere (one per core): a plain process gets that by
    # default; Ray would set OMP_NUM_THREADS to the replica's num_cpus (1), so Ray kinds get
    # it set to the core count. Plain processes are left as their users run them: with
    # OMP_NUM_THREADS set, modserve's compiled int8 core measured ~15 % slower on 2 cores
    # (4 alternating runs, 2026-11-22), for the same thread count.
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # modserve's response cache off: peers have none, and the workloads repeat texts;
        # benchmarks/cache.py measures it on purpose
        "MODSERVE_CACHE_BYTES": "0",
        **({"OMP_NUM_THREADS": str(os.cpu_count() or 1)} if kind in RAY_KINDS else {}),
        **(env or {}),
    }
    py = sys.executable
    grpc_url, ready = None, "/ready"
    cwd: Path | None = None
    if kind in MODSERVE_ENV_BY_KIND:
        grpc_port = free_port()
        grpc_url = f"127.0.0.1:{grpc_port}"
        full_env.update(
            {
                "MODSERVE_MODEL_REPO": str(model_dir.parent),
                "MODSERVE_MODEL": model_dir.name,
                "MODSERVE_HOST": "127.0.0.1",
                "MODSERVE_PORT": str(port),
                "MODSERVE_GRPC_PORT": str(grpc_port),
                "MODSERVE_LOG_LEVEL": "warning",
                **MODSERVE_ENV_BY_KIND[kind],
            }
        )
        argv = [py, "-m", "serving.cli", "serve"]
    elif kind in ("modserve-ray", "ray-batch"):
        app = "modserve" if kind == "modserve-ray" else "ray-batch"
        argv = [
            py,
            "-m",
            "benchmarks.peers.ray_runner",
            "--app",
            app,
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
        ]
    elif kind == "naive":
        argv = [
            py,
            "-m",
            "benchmarks.peers.naive_server",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
        ]
    elif kind in ("infinity", "infinity-onnx"):
        from benchmarks.peers import infinity_peer

        engine = "optimum" if kind == "infinity-onnx" else "torch"
        argv, cwd = infinity_peer.command(model_dir, port, engine)
        ready = "/health"
    else:
        raise ValueError(f"unknown server kind {kind!r}; choose from {KINDS}")
    log = Path(tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(kind, proc, f"http://127.0.0.1:{port}", log, grpc_url, model_dir.name, ready)
