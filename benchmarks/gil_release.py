"""How much Python runs beside a compiled int8-path kernel: the GIL release, timed.

``serving.model.quantize.release_gil_in_inductor_kernels`` makes inductor's binding of its
C++ kernels drop the GIL while they run, so the event loop (and a second core thread's
Python) keeps running during a forward. Here a counter thread ticks alone for a while (its
free rate), then while one single-threaded compiled kernel runs on the other core, with the
patched binding and with inductor's own; the share of its free rate it kept is the result
(measured before: ~0.55-0.65 patched, ~0.2 unpatched, on 2 idle cores). The unit test
checks the compiled source instead (deterministic); this needs an idle machine.

The same for the bfloat16 model core (``serving.model.bf16_cpu``), eager and traced
(TorchScript runs the whole forward without the GIL), on ``--model-dir`` at 5 x 56 tokens,
when the model passed its bfloat16 gate.

    python -m benchmarks.gil_release [--model-dir model_repo/modserve-moderation-minilm]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.probes import machine_info
from serving.model import quantize


def kept_share(fn: Any, x: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """(best share of its free rate a counter thread kept while ``fn(x)`` ran, seconds)."""
    ticks, running = [0], threading.Event()

    def count() -> None:
        running.set()
        while running.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    running.wait()
    before, t0 = ticks[0], time.perf_counter()
    time.sleep(0.2)
    rate = (ticks[0] - before) / (time.perf_counter() - t0)
    shares, seconds = [], 0.0
    for _ in range(repeats):
        before, t0 = ticks[0], time.perf_counter()
        fn(x)
        seconds = time.perf_counter() - t0
        shares.append((ticks[0] - before) / (rate * seconds))
    running.clear()
    t.join()
    return max(shares), seconds


def measure(patched: bool) -> dict[str, float]:
    from torch._inductor.codecache import CppPythonBindingsCodeCache as bindings

    bindings.call_entry_function = (
        quantize._KERNEL_CALL_WITHOUT_GIL if patched else quantize._KERNEL_CALL
    )
    torch._dynamo.reset()

    @torch.compile(dynamic=True)
    def heavy(x: torch.Tensor) -> torch.Tensor:  # one fused C++ loop
        for _ in range(8):
            x = torch.sin(x) * 1.0001 + torch.cos(x)
        return x

    x = torch.rand(16_000_000)
    heavy(x[:1000])  # compiles outside the measurement
    share, seconds = kept_share(heavy, x)
    return {"share_of_free_rate": round(share, 3), "kernel_s": round(seconds, 3)}


def measure_bf16_core(model_dir: Path) -> dict[str, dict[str, float]]:
    """Share kept by the counter beside one bfloat16 forward (5 x 56 tokens), eager vs traced."""
    from serving.model.load import load_model

    loaded = load_model(model_dir, "cpu", "bfloat16")
    ids = torch.randint(1000, 20000, (5, 56))
    mask = torch.ones_like(ids)
    out = {}
    for name, model in (("bf16 eager", loaded.moderation_model), ("bf16 traced", loaded.model)):
        with torch.inference_mode():
            model(ids, mask)  # warm-up
            share, seconds = kept_share(lambda x, m=model: m(x, mask), ids)
        out[name] = {"share_of_free_rate": round(share, 3), "kernel_s": round(seconds, 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--model-dir", type=Path, default=None, help="also its bfloat16 core")
    a = p.parse_args(argv)
    if not quantize.release_gil_in_inductor_kernels():
        print("this torch's inductor binding is not the one the patch was written for")
        return 1
    torch.set_num_threads(1)  # compiled into the kernel: it leaves a core to the counter
    res: dict[str, Any] = {"patched": measure(True), "inductor's own": measure(False)}
    quantize.release_gil_in_inductor_kernels()  # leave the process as serving has it
    if a.model_dir is not None:
        res.update(measure_bf16_core(a.model_dir))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res.update(
        command=" ".join(["python -m benchmarks.gil_release", *(argv or sys.argv[1:])]),
        date=stamp,
        machine=machine_info(),
    )
    print("| binding | counter kept (share of free rate) | kernel s |\n|---|---|---|")
    for k in [k for k in res if isinstance(res[k], dict) and "kernel_s" in res[k]]:
        print(f"| {k} | {res[k]['share_of_free_rate']} | {res[k]['kernel_s']} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"gil_release-{stamp}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
