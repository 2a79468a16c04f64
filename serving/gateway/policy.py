"""The policy file (``MODSERVE_POLICY_FILE``, YAML): projects, what each may use, its
thresholds, quotas and whether its audit log may keep input text.

Validated with pydantic when the server starts; a bad file stops it with
``<file>:<line>: <field>: <problem>``. The policy's version is a hash of the file's bytes, so
every audit record names exactly the rules that decided it.

Example::

    policy_id: acme-trust-and-safety
    projects:
      - id: prod-moderation
        models: [modserve-moderation-minilm]      # unset: the default model only
        thresholds: {harassment: 0.7, hate: 0.5}  # override the model's own
        quotas: {requests_per_minute: 6000, tokens_per_minute: 2000000,
                 max_concurrent_requests: 64}
        key_quotas: {requests_per_minute: 600}    # each key of the project
      - id: llm-evals
        risk_thresholds: {review_needed: 0.3, reject: 0.6, block: 0.8}
        evaluation_ensemble: [{model: modserve-moderation-minilm, weight: 1.0}]
        retain_text: true                         # audit lines keep the input text

Without a policy file, ``MODSERVE_API_KEYS`` (or no keys at all) is one implicit project,
``default``, that may use every model and route, with no quotas.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PROJECT_ID = "default"
PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quotas(_Strict):
    """Limits over a sliding minute (token buckets: the full amount refills in 60 s, so a
    burst of a minute's worth is allowed, then the steady rate). Unset = unlimited."""

    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(
        None, gt=0, description="input tokens, estimated as OpenAI's limiter does: chars / 4"
    )
    max_concurrent_requests: int | None = Field(None, gt=0)

    @property
    def empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class RiskThresholds(_Strict):
    """``/v1/evaluate/toxicity`` risk levels by consensus score: below ``review_needed`` is
    acceptable; ``reject`` and above is rejected; ``block`` and above is blocked outright."""

    review_needed: float = Field(0.3, gt=0, lt=1)
    reject: float = Field(0.6, gt=0, lt=1)
    block: float = Field(0.8, gt=0, lt=1)

    @model_validator(mode="after")
    def _ascending(self) -> RiskThresholds:
        if not self.review_needed < self.reject <= self.block:
            raise ValueError("must ascend: review_needed < reject <= block")
        return self


class EnsembleMember(_Strict):
    model: str
    weight: float = Field(1.0, gt=0)
    role: str = "primary"


class Project(_Strict):
    id: str = Field(pattern=PROJECT_ID_PATTERN)
    description: str = ""
    models: list[str] | None = Field(
        None, description="models this project may use; unset = the server's default model"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="category -> flag threshold, overriding the model's"
    )
    risk_thresholds: RiskThresholds = RiskThresholds()
    evaluation_ensemble: list[EnsembleMember] = Field(
        default_factory=list, description="models of /v1/evaluate/toxicity; empty = default model"
    )
    quotas: Quotas = Quotas()
    key_quotas: Quotas = Field(Quotas(), description="limits of each key of the project")
    retain_text: bool = Field(False, description="audit records may keep the input text")

    @field_validator("evaluation_ensemble")
    @classmethod
    def _each_model_once(cls, v: list[EnsembleMember]) -> list[EnsembleMember]:
        names = [m.model for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each model at most once (give it a weight instead): {names}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0.0 < t <= 1.0}
        if bad:
            raise ValueError(f"thresholds must be in (0, 1]: {bad}")
        return v

    def may_use(self, model: str, default_model: str) -> bool:
        allowed = self.models if self.models is not None else [default_model]
        return model in allowed or "*" in allowed


class PolicyFile(_Strict):
    policy_id: str = "default"
    projects: list[Project] = Field(min_length=1)

    @field_validator("projects")
    @classmethod
    def _unique_ids(cls, projects: list[Project]) -> list[Project]:
        ids = [p.id for p in projects]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"project ids must be unique; repeated: {dupes}")
        return projects


class Policy:
    """A loaded policy: its projects by id, its id and version (file hash)."""

    def __init__(self, spec: PolicyFile, version: str, path: Path | None = None) -> None:
        self.spec = spec
        self.version = version
        self.path = path
        self.projects = {p.id: p for p in spec.projects}

    @property
    def policy_id(self) -> str:
        return self.spec.policy_id

    def project(self, project_id: str) -> Project | None:
        return self.projects.get(project_id)


IMPLICIT_POLICY = Policy(
    PolicyFile(policy_id="implicit", projects=[Project(id=DEFAULT_PROJECT_ID, models=["*"])]),
    version="none",
)


def load_policy(path: Path) -> Policy:
    """Read and validate ``path``; raises ``PolicyError`` naming the line and field."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the policy file: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise PolicyError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    try:
        spec = PolicyFile.model_validate(data if data is not None else {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(text, loc)
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise PolicyError(f"{path}:{line}: {field}: {err['msg']}{more}") from None
    version = hashlib.sha256(raw).hexdigest()[:12]
    return Policy(spec, version, path)


def _line_of(text: str, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node at ``loc`` (or of the deepest part of it that exists)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    line = 1 if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
