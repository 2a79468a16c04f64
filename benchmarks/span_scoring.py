"""Span scoring: how much diluted harm it catches, how many benign texts it flags, what it costs.

Span scoring (model config ``span_tokens`` / ``span_stride_tokens``) scores every input
longer than one span also as overlapping spans of that many tokens, beside its model-window
chunks, and serves the max over all of them: a harmful sentence is never averaged with a
page of benign text, but every span of a benign page is one more chance to be flagged.

On one model and one dilution set (``training.dilution``: validation positives placed
among 0-8 benign validation rows, benign-only composites of the same sizes), each span
setting is scored exactly as the server scores (``training.evaluate.served_flags``, the
model's thresholds) and reported beside no spans:

* recall with 1-8 benign rows, retained (of the positives flagged alone, the share still
  flagged in context), false flags on benign composites, AUPRC (targets vs benign);
* cost: tokens run through the model (padded to each chunk's own length, as the engine's
  length buckets nearly do) relative to no spans, and the measured scoring time ratio
  (trust it only on an idle machine; the token ratio is exact).

    python -m benchmarks.span_scoring --run-dir runs/minilm-v8 \\
        [--model-dir model_repo/modserve-moderation-minilm] [--spans 64/32,128/32]

Prints a table, writes ``benchmarks/results/span_scoring-<stamp>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.probes import machine_info
from benchmarks.report import save_json_and_plot
from serving.engine.tokenization import ChunkingTokenizer
from serving.model.load import LoadedModel, load_model
from training import dilution as DL
from training.evaluate import served_flags
from training.train import split_from_run

ROOT = Path(__file__).resolve().parents[1]


def parse_spans(text: str) -> list[tuple[int, int]]:
    """``"64/32,128/32"`` -> [(64, 32), (128, 32)] (span tokens / overlap tokens)."""
    out = []
    for item in filter(None, text.split(",")):
        span, _, stride = item.partition("/")
        out.append((int(span), int(stride or 0)))
    return out


def with_spans(loaded: LoadedModel, span: int, stride: int) -> LoadedModel:
    cfg = loaded.cfg.model_copy(update={"span_tokens": span, "span_stride_tokens": stride})
    return dataclasses.replace(loaded, cfg=cfg)


def model_tokens(loaded: LoadedModel, texts: list[str]) -> int:
    """Tokens the model runs for ``texts`` (every chunk and span, specials included)."""
    chunks = ChunkingTokenizer.for_model(loaded.tokenizer, loaded.cfg).chunk_texts(texts)
    return sum(len(c.ids) for c in chunks)


def measure(loaded: LoadedModel, dset: DL.DilutionSet) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = DL.run(dset, lambda t: served_flags(loaded, t))
    seconds = time.perf_counter() - t0
    overall = res["all_context"]
    return {
        "recall": res["headline_recall"],
        "retained": res["headline_retained"],
        "false_flag_rate": res["headline_false_flag_rate"],
        "auprc": overall.get("auprc"),
        "recall_alone": res["by_context_size"]["0"]["recall"],
        "by_context_size": res["by_context_size"],
        "model_tokens": model_tokens(loaded, dset.texts),
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="its validation split is used")
    p.add_argument(
        "--model-dir", type=Path, default=ROOT / "model_repo" / "modserve-moderation-minilm"
    )
    p.add_argument("--spans", type=parse_spans, default=parse_spans("64/32,128/32"))
    p.add_argument("--targets", type=int, default=DL.TARGETS, help="validation positives")
    p.add_argument("--benign", type=int, default=DL.BENIGN_PER_SIZE, help="per context size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = load_model(args.model_dir, "cpu", "float32")
    val = split_from_run(args.run_dir, base.cfg.served_categories)[1]
    dset = DL.build_set(val, base.cfg.served_categories, base.tokenizer, 0, args.targets,
                        args.benign)  # fmt: skip
    settings = {"off": (0, 0)} | {f"{s}/{st}": (s, st) for s, st in args.spans}
    results: dict[str, Any] = {}
    for name, (span, stride) in settings.items():
        results[name] = measure(with_spans(base, span, stride), dset)
        print(name, {k: v for k, v in results[name].items() if k != "by_context_size"})
    off = results["off"]
    for r in results.values():
        r["token_ratio"] = round(r["model_tokens"] / off["model_tokens"], 3)
        r["time_ratio"] = round(r["seconds"] / off["seconds"], 3)
    res = {
        "command": "python -m benchmarks.span_scoring " + " ".join(argv or []),
        "machine": machine_info(),
        "model": f"{base.cfg.name} version {base.cfg.version}",
        "dilution_set": {
            "texts": len(dset.texts),
            "targets": args.targets,
            "benign_per_size": args.benign,
        },
        "results": results,
    }
    print(table(res))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    save_json_and_plot(res, args.out, f"span_scoring-{stamp}", lambda path: plot(res, path))
    return 0


def table(res: dict[str, Any]) -> str:
    rows = [
        "| spans (tokens / overlap) | recall, 1-8 benign rows | retained | false flags "
        "| AUPRC | recall alone | model tokens | scoring time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["results"].items():
        rows.append(
            f"| {name} | {r['recall']:.3f} | {r['retained']:.3f} | {r['false_flag_rate']:.2%} "
            f"| {r['auprc']:.3f} | {r['recall_alone']:.3f} | {r['token_ratio']:.2f}x "
            f"| {r['time_ratio']:.2f}x |"
        )
    return "\n".join(rows)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in res["results"].items():
        by = {int(k): v for k, v in r["by_context_size"].items()}
        ks = sorted(by)
        a1.plot(ks, [by[k].get("recall") for k in ks], marker="o", label=f"spans {name}")
        a2.scatter(r["token_ratio"], r["false_flag_rate"], s=40)
        a2.annotate(name, (r["token_ratio"], r["false_flag_rate"]), fontsize=8)
    a1.set(xlabel="benign rows around the harmful one", ylabel="recall (model thresholds)",
           ylim=(0, 1), title=res["model"])  # fmt: skip
    a1.legend(fontsize=8)
    a2.set(xlabel="model tokens vs no spans", ylabel="false flags on benign composites",
           title="what spans cost")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
