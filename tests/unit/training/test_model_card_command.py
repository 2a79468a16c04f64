"""The model card's training command reproduces the run: every flag that was set."""

from __future__ import annotations

from dataclasses import asdict

from training.model_card import _train_command
from training.train import TrainArgs


def test_the_command_names_every_flag_that_differs_from_its_default() -> None:
    args = TrainArgs(
        data=["d1", "d2"], run_dir="runs/x", pooling="attention", composite_share=0.3,
        max_length=256, labels=["hate", "violence"], bf16=True,
        source_weight=["a=0.5", "b=0.3"],
    )  # fmt: skip
    cmd = _train_command(asdict(args))
    assert cmd.startswith("python -m training.train --data d1 d2 --run-dir runs/x ")
    for part in ("--pooling attention", "--composite-share 0.3", "--max-length 256",
                 "--labels hate violence", "--bf16",
                 "--source-weight a=0.5 --source-weight b=0.3"):  # fmt: skip
        assert part in cmd, part
    assert "--lr" not in cmd and "--resume" not in cmd  # defaults are left out
