"""Entry points for ``modserve train|eval|calibrate|export|import-hf`` (argv without the verb).

Each ``*_main(argv)`` returns a process exit code. The same commands run as
``python -m training.train|evaluate|calibrate|export``.
"""

from __future__ import annotations


def train_main(argv: list[str] | None = None) -> int:
    """Fine-tune a moderation model (continue one with --init-from)."""
    from training.train import main

    return main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    """Evaluate a model directory on labelled JSONL: a table, optional JSON."""
    from training.evaluate import main

    return main(argv)


def calibrate_main(argv: list[str] | None = None) -> int:
    """Choose per-category thresholds into config.yaml (+ calibration.png)."""
    from training.calibrate import main

    return main(argv)


def export_main(argv: list[str] | None = None) -> int:
    """Export a run into model_repo: calibrate, int8 gate, evaluate, model card."""
    from training.export import main

    return main(argv)


def import_hf_main(argv: list[str] | None = None) -> int:
    """Import a local Hugging Face sequence classifier (own labels and head) into model_repo."""
    from training.import_hf import main

    return main(argv)


def audit_main(argv: list[str] | None = None) -> int:
    """Summarise the decision audit log: flag rates, policy versions, reasons."""
    from serving.gateway.audit_summary import main

    return main(argv)


def dataset_main(argv: list[str] | None = None) -> int:
    """Check a moderation dataset (JSONL): schema, duplicates, leakage, balance."""
    from training.dataset_check import main

    return main(argv)


COMMANDS = {
    "train": train_main,
    "eval": eval_main,
    "calibrate": calibrate_main,
    "export": export_main,
    "import-hf": import_hf_main,
    "audit": audit_main,
    "dataset": dataset_main,
}


def main(argv: list[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} [options]")
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
