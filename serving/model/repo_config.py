"""The model repository format: ``model_repo/<name>/config.yaml`` + ``<version>/``.

Layout (written by ``modserve train``/``training.export``, read by ``serving.model.load``)::

    model_repo/<name>/
      config.yaml          this file's schema (ModelConfig), human-edited thresholds live here
      README.md            model card
      <version>/           e.g. 1/
        config.json        HF encoder config (architectures, hidden size, ...)
        tokenizer.json     fast tokenizer (+ tokenizer_config.json, vocab.txt, ...)
        model.safetensors  encoder weights under their AutoModel names
                           + "classifier.weight" (C, H) and "classifier.bias" (C,)

An imported model (``architecture: hf``, ``modserve import-hf``) has a transformers
checkpoint in ``<version>/`` (config.json with its own head and ``id2label``,
model.safetensors under its own names, tokenizer) and its own ``labels``; ``label_map``
says which of them answer which OpenAI categories.

The classifier rows are in the order of ``labels``. Categories listed under
``derived`` have no trained head: their score is computed from a parent score
and a transparent lexicon gate (see ``DerivedRule``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from kernels.classification_head import Pooling
from serving.categories import BY_WIRE, CORE_WIRE_NAMES, ordered

CONFIG_FILE = "config.yaml"


class DerivedRule(BaseModel):
    """Score for a category that has no trained head.

    ``score = parent_score * (1.0 if gate matches the input text else ungated_factor)``.
    An empty ``gate_regex`` means "always gated in" (the child equals its parent).
    """

    parent: str
    gate_regex: str = ""
    ungated_factor: float = Field(0.0, ge=0.0, le=1.0)
    note: str = ""

    def compiled(self) -> re.Pattern[str] | None:
        return re.compile(self.gate_regex, re.IGNORECASE) if self.gate_regex else None


class ModelConfig(BaseModel):
    """Schema of ``model_repo/<name>/config.yaml``."""

    name: str
    version: str = "1"
    description: str = ""
    architecture: Literal["modserve", "hf"] = Field(
        "modserve",
        description="modserve: encoder + modserve's pooled head (model.safetensors as above); "
        "hf: a transformers *ForSequenceClassification checkpoint served with its own head "
        "(``modserve import-hf``); its labels are its own names",
    )
    labels: list[str] = Field(description="categories with a trained head, in classifier row order")
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="hf models: own label -> OpenAI category, for /v1/moderations (several "
        "labels may map to one category: it scores their max); unmapped labels are served by "
        "/v1/classify and KServe only",
    )
    thresholds: dict[str, float] = Field(default_factory=dict)
    default_threshold: float = 0.5
    derived: dict[str, DerivedRule] = Field(default_factory=dict)
    max_length_tokens: int = Field(256, description="model window per chunk, incl. special tokens")
    chunk_stride_tokens: int = Field(32, description="overlap between consecutive chunks")
    span_tokens: int = Field(
        0,
        ge=0,
        description="span scoring: inputs longer than this (incl. special tokens) are also "
        "scored as overlapping spans of it, max over spans and windows; 0 = off. Smaller "
        "catches a short harmful span in long text (dilution) at more tokens per input.",
    )
    span_stride_tokens: int = Field(0, ge=0, description="overlap between consecutive spans")
    buckets_tokens: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256])
    pooling: Pooling = Field(
        "mean",
        description="how token states become one score per category "
        "(kernels.classification_head): attention = one learned query per category "
        "(classifier.query in the weights), so a short harmful span is not averaged away",
    )
    activation: Literal["sigmoid", "softmax"] = "sigmoid"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    int8_ok: bool = Field(False, description="int8 passed the accuracy gate for this model")
    int8_float_layers: list[str] = Field(
        default_factory=list,
        description="encoder Linears kept float32 when serving int8 (qualified names): the "
        "fewest whose int8 error moved scores most, chosen by the export so int8 passes the "
        "gate; each costs a little int8 speed",
    )
    bf16_ok: bool = Field(
        False,
        description="bfloat16 on CPU (torch, oneDNN: serving.model.bf16_cpu) passed the "
        "accuracy gate for this model; offered on CPUs with AVX512-BF16 or AMX-BF16",
    )
    onnx_int8_ok: bool = Field(
        False,
        description="the ONNX Runtime int8 graph (backend onnxruntime, dtype int8) passed "
        "the accuracy gate for this model",
    )
    onnx_int8_weight_bits: Literal[7, 8] = Field(
        8,
        description="weight bits of the gated ONNX Runtime int8 graph: 7 is exact on every "
        "x86 CPU, 8 only on CPUs with VNNI (others saturate; the server skips it there)",
    )
    onnx_int8_float_layers: list[str] = Field(
        default_factory=list,
        description="encoder Linears kept float32 in the ONNX Runtime int8 graph (qualified "
        "names), chosen by its gate like int8_float_layers",
    )

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or not all(v):
            raise ValueError("labels must be non-empty and unique")
        return v

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.architecture == "hf":
            self._check_hf()
        else:
            self._check_modserve()
        b = sorted(set(self.buckets_tokens))
        if not b or b[-1] < self.max_length_tokens:
            b.append(self.max_length_tokens)
        self.buckets_tokens = [x for x in b if x <= self.max_length_tokens]
        if self.chunk_stride_tokens >= self.max_length_tokens - 2:
            raise ValueError("chunk_stride_tokens must be smaller than max_length_tokens - 2")
        if self.span_tokens and not (
            self.span_stride_tokens < self.span_tokens - 2 <= self.max_length_tokens - 2
        ):
            raise ValueError(
                "span_tokens must fit the model window and exceed span_stride_tokens + 2"
            )
        return self

    def _check_modserve(self) -> None:
        for w in self.labels:
            if w not in BY_WIRE:
                raise ValueError(f"unknown category {w!r}")
        if self.label_map:
            raise ValueError("label_map is for architecture: hf (own label names)")
        for child, rule in self.derived.items():
            if child not in BY_WIRE or rule.parent not in BY_WIRE:
                raise ValueError(f"derived rule {child!r} <- {rule.parent!r}: unknown category")
            if child in self.labels:
                raise ValueError(f"{child!r} is both a trained head and derived")
            if rule.parent not in self.labels:
                raise ValueError(f"derived {child!r}: parent {rule.parent!r} has no head")
        missing = [w for w in CORE_WIRE_NAMES if w not in self.labels and w not in self.derived]
        if missing:
            raise ValueError(
                f"model {self.name!r} does not score {missing}: every OpenAI core category needs "
                "a trained head (labels) or a derived rule (derived) so responses are complete"
            )
        for w in self.thresholds:
            if w not in BY_WIRE:
                raise ValueError(f"threshold for unknown category {w!r}")

    def _check_hf(self) -> None:
        if self.derived:
            raise ValueError("derived categories are for architecture: modserve")
        for own, wire in self.label_map.items():
            if own not in self.labels:
                raise ValueError(f"label_map: {own!r} is not one of the model's labels")
            if wire not in BY_WIRE:
                raise ValueError(f"label_map: {own!r} -> unknown OpenAI category {wire!r}")
        for w in self.thresholds:
            if w not in self.labels:
                raise ValueError(f"threshold for unknown label {w!r}")

    @property
    def served_categories(self) -> list[str]:
        """Everything this model answers for: the OpenAI categories in canonical order, or
        an hf model's own labels in its classifier order."""
        if self.architecture == "hf":
            return list(self.labels)
        return ordered([*self.labels, *self.derived])

    def threshold(self, wire: str) -> float:
        return self.thresholds.get(wire, self.default_threshold)

    def version_dir(self, model_dir: Path) -> Path:
        return model_dir / str(self.version)


def load_model_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model directory needs a {CONFIG_FILE}")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    return ModelConfig.model_validate(raw)


def save_model_config(cfg: ModelConfig, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    data = cfg.model_dump(mode="json")
    with path.open("w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return path
