"""What the benchmark reads from the server side: batch/padding counters, CPU time, machine.

* ``scrape_batch_stats(base)``: modserve's Prometheus counters (``modserve_tokens_real_total``,
  ``modserve_tokens_padded_total``, ``modserve_batch_size`` sum/count, and the model's
  forward time ``modserve_inference_duration_seconds_sum``) or a peer's ``/stats`` JSON
  with the same four numbers; ``{}`` when the server exposes neither.
* ``batch_stats_delta(before, after, wall_s)``: padding ratio and mean batch size between
  two scrapes, the batch composition (``per_bucket``), and, where the forward time is
  exposed, ``serving_efficiency`` = seconds the model core ran / wall seconds, i.e. the
  **core busy fraction** (1.0 = the core never waited for the serving layer). It does not
  see the core running *slower* because it shares the cores with the serving threads;
  ``core_padded_tokens_per_s`` shows that, and ``benchmarks.core_replay`` turns the
  composition into the server-over-core throughput ratio against an idle core.
* ``ProcessTreeCpu(pid)``: user+system CPU seconds of a process and all its descendants
  (psutil if installed, else /proc), so Ray's worker processes are counted too.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import httpx

from serving.model.cpu_isa import cpu_isa

_PROM = {
    "real_tokens": "modserve_tokens_real_total",
    "padded_tokens": "modserve_tokens_padded_total",
    "sequences": "modserve_batch_size_sum",
    "batches": "modserve_batch_size_count",
}
_PROM_OPTIONAL = {"model_seconds": "modserve_inference_duration_seconds_sum"}


def _sum_metric(text: str, name: str) -> float:
    pat = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", re.M)
    return sum(float(m.group(2)) for m in pat.finditer(text))


def _per_bucket(text: str) -> dict[int, list[float]]:
    """{bucket length: [batches, sequences]} from modserve's per-bucket batch-size histogram."""
    out: dict[int, list[float]] = {}
    pat = re.compile(
        r'^modserve_batch_size_(count|sum)\{[^}]*bucket="(\d+)"[^}]*\}\s+([0-9.eE+-]+)$', re.M
    )
    for m in pat.finditer(text):
        row = out.setdefault(int(m.group(2)), [0.0, 0.0])
        row[0 if m.group(1) == "count" else 1] += float(m.group(3))
    return out


def scrape_batch_stats(base_url: str) -> dict[str, Any]:
    """Cumulative {real_tokens, padded_tokens, sequences, batches} or {} if not exposed;
    modserve adds ``model_seconds`` and ``per_bucket`` ({bucket: [batches, sequences]})."""
    try:
        r = httpx.get(base_url + "/stats", timeout=5)
        if r.status_code == 200:
            data = r.json()
            return {k: float(data[k]) for k in _PROM}
        r = httpx.get(base_url + "/metrics", timeout=5)
        if r.status_code == 200 and _PROM["padded_tokens"] in r.text:
            found = {k: v for k, v in _PROM_OPTIONAL.items() if v in r.text}
            stats: dict[str, Any] = {
                k: _sum_metric(r.text, v) for k, v in {**_PROM, **found}.items()
            }
            stats["per_bucket"] = _per_bucket(r.text)
            return stats
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    return {}


def batch_stats_delta(
    before: dict[str, Any], after: dict[str, Any], wall_s: float | None = None
) -> dict[str, Any]:
    """Mean batch size, padding ratio (padded / real tokens, 1.0 = no padding) in between;
    serving efficiency (core seconds / ``wall_s``) when the server exposes its forward time."""
    if not before or not after:
        return {"padding_ratio": None, "mean_batch_size": None, "serving_efficiency": None}
    d = {k: after[k] - before[k] for k in _PROM}
    core_s = (
        after["model_seconds"] - before["model_seconds"]
        if "model_seconds" in before and "model_seconds" in after
        else None
    )
    prev = before.get("per_bucket", {})
    per_bucket = {
        b: [n - prev.get(b, [0.0, 0.0])[0], q - prev.get(b, [0.0, 0.0])[1]]
        for b, (n, q) in after.get("per_bucket", {}).items()
    }
    return {
        "serving_efficiency": round(core_s / wall_s, 3) if core_s is not None and wall_s else None,
        "core_padded_tokens_per_s": round(d["padded_tokens"] / core_s) if core_s else None,
        "wall_s": round(wall_s, 3) if wall_s else None,
        # {bucket length: [batches, sequences]} run in between: the batch composition
        "per_bucket": {b: v for b, v in per_bucket.items() if v[0] > 0},
        "padding_ratio": round(d["padded_tokens"] / d["real_tokens"], 3)
        if d["real_tokens"]
        else None,
        "mean_batch_size": round(d["sequences"] / d["batches"], 2) if d["batches"] else None,
        "padded_tokens": int(d["padded_tokens"]),
        "real_tokens": int(d["real_tokens"]),
    }


def _children_proc() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


class ProcessTreeCpu:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")

    def _pids(self) -> list[int]:
        kids, out, todo = _children_proc(), [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(kids.get(p, []))
        return out

    def cpu_s(self) -> float:
        try:
            import psutil

            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        except ImportError:
            pass
        except Exception:
            return 0.0
        total = 0
        for p in self._pids():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                continue
        return total * self.tick_s


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, ISA extensions and cores, OS, Python, library versions, git commit, date (UTC)."""
    versions: dict[str, str | None] = {}
    for lib in (
        "torch",
        "transformers",
        "tokenizers",
        "fastapi",
        "uvicorn",
        "httpx",
        "ray",
        "tritonclient",
        "numpy",
    ):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_cores": os.cpu_count(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "git_commit": commit,
        "libraries": versions,
        "gpu": "none (CPU only)",
    }
