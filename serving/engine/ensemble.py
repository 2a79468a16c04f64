"""Weighted ensembles of served models, defined in ``model_repo/<name>/config.yaml``::

    name: moderation-ensemble
    members: {modserve-moderation-minilm: 2.0, my-other-model: 1.0}
    combine: weighted_mean        # or mean
    thresholds: {hate: 0.45}      # optional; default_threshold otherwise

Members are ordinary served models (each its own engine, batcher and, on Ray, deployment).
The ensemble scores every category as the (weighted) mean of its members' scores, applies
its own thresholds and the child-implies-parent rule, and reports ``model_agreement`` per
input: the share of members whose own ``flagged`` matches the ensemble's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, Field

from serving.engine.postprocess import Flagger
from serving.engine.types import Classifier, ClassifyResult, Timings


class EnsembleConfig(BaseModel):
    name: str
    description: str = ""
    members: dict[str, float] = Field(min_length=1, description="member model -> weight")
    combine: Literal["mean", "weighted_mean"] = "weighted_mean"
    thresholds: dict[str, float] = Field(default_factory=dict)
    default_threshold: float = 0.5


def is_ensemble_dir(model_dir: Path) -> bool:
    path = model_dir / "config.yaml"
    if not path.is_file():
        return False
    raw = yaml.safe_load(path.read_text()) or {}
    return isinstance(raw, dict) and "members" in raw


def load_ensemble_config(model_dir: Path) -> EnsembleConfig:
    return EnsembleConfig.model_validate(yaml.safe_load((model_dir / "config.yaml").read_text()))


class EnsembleEngine:
    """A ``Classifier`` that fans a request out to its members and combines the scores."""

    version = "1"  # an ensemble has no model_repo version folder
    label_map: dict[str, str] = {}  # noqa: RUF012 - never mutated: its columns are OpenAI's

    def __init__(self, cfg: EnsembleConfig, members: Mapping[str, Classifier]) -> None:
        imported = [n for n, m in members.items() if m.label_map]
        if imported:
            raise ValueError(
                f"ensemble {cfg.name!r}: {imported} are imported models with their own labels; "
                "an ensemble combines models that score OpenAI categories"
            )
        self.cfg = cfg
        self.name = cfg.name
        self.members = members
        common = set.intersection(*(set(m.categories) for m in members.values()))
        first = next(iter(members.values())).categories
        self.categories = [w for w in first if w in common]
        w = np.array(
            [cfg.members[n] if cfg.combine == "weighted_mean" else 1.0 for n in members],
            dtype=np.float32,
        )
        self.weights = w / w.sum()
        self.flagger = Flagger(
            self.categories, [cfg.thresholds.get(c, cfg.default_threshold) for c in self.categories]
        )

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.members.values())

    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        results = await asyncio.gather(
            *(m.classify(texts, timeout_s) for m in self.members.values())
        )
        stacked = np.stack(
            [  # (M, N, C) in the ensemble's column order
                r.scores[:, [r.categories.index(c) for c in self.categories]] for r in results
            ]
        )
        scores = np.tensordot(self.weights, stacked, axes=1).astype(np.float32)  # (N, C)
        flags = self.flagger.flags(scores)
        ensemble_flagged = flags.any(axis=1)
        member_flagged = np.stack([r.flags.any(axis=1) for r in results])  # (M, N)
        agreement = (member_flagged == ensemble_flagged).mean(axis=0)
        timings = Timings(
            tokenization_s=max(r.timings.tokenization_s for r in results),
            queue_s=max(r.timings.queue_s for r in results),
            inference_s=max(r.timings.inference_s for r in results),
            total_s=max(r.timings.total_s for r in results),
            tokens=sum(r.timings.tokens for r in results),
            characters=results[0].timings.characters,
            cached_inputs=min(r.timings.cached_inputs for r in results),
        )
        return ClassifyResult(
            self.name,
            self.categories,
            scores,
            flags,
            timings,
            extras={"model_agreement": agreement.tolist()},
            thresholds=self.flagger.thresholds,
        )


def plan_models(names: list[str], repo: Path) -> tuple[list[str], dict[str, EnsembleConfig]]:
    """Split requested model names into plain models to load (members included, each once)
    and ensembles to assemble from them."""
    plain: list[str] = []
    ensembles: dict[str, EnsembleConfig] = {}
    for name in names:
        if is_ensemble_dir(repo / name):
            cfg = load_ensemble_config(repo / name)
            if cfg.name != name:
                raise ValueError(f"{repo / name}/config.yaml names itself {cfg.name!r}")
            ensembles[name] = cfg
            plain += [m for m in cfg.members if m not in plain]
        elif name not in plain:
            plain.append(name)
    nested = [m for cfg in ensembles.values() for m in cfg.members if m in ensembles]
    if nested:
        raise ValueError(f"ensembles of ensembles are not supported: {nested}")
    return plain, ensembles
