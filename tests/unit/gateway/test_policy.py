"""The policy file: what loads, what stops the server (with line and field), thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.gateway.policy import PolicyError, load_policy

GOOD = """\
policy_id: acme
projects:
  - id: prod
    models: [tiny]
    thresholds: {hate: 0.2}
    quotas: {requests_per_minute: 600, max_concurrent_requests: 4}
    key_quotas: {tokens_per_minute: 10000}
  - id: evals
    risk_thresholds: {review_needed: 0.2, reject: 0.5, block: 0.9}
    evaluation_ensemble: [{model: tiny, weight: 2}]
    retain_text: true
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_a_good_policy_loads_with_its_version(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, GOOD))
    assert policy.policy_id == "acme" and set(policy.projects) == {"prod", "evals"}
    prod = policy.project("prod")
    assert prod is not None and prod.quotas.requests_per_minute == 600
    assert prod.key_quotas.tokens_per_minute == 10000 and not prod.retain_text
    assert prod.may_use("tiny", "default-model") and not prod.may_use("other", "default-model")
    evals = policy.project("evals")
    assert evals is not None and evals.retain_text and evals.risk_thresholds.block == 0.9
    assert evals.may_use("default-model", "default-model")  # models unset: the default one
    assert not evals.may_use("tiny", "default-model")
    first = policy.version
    assert len(first) == 12
    assert load_policy(_write(tmp_path, GOOD.replace("600", "601"))).version != first


@pytest.mark.parametrize(
    ("change", "line", "field"),
    [
        (("600", "-5"), 6, "projects.0.quotas.requests_per_minute"),
        (("retain_text: true", "retain_text: true\n    colour: blue"), 12, "projects.1.colour"),
        (("hate: 0.2", "hate: 1.5"), 5, "projects.0.thresholds"),
        (("reject: 0.5", "reject: 0.1"), 9, "projects.1.risk_thresholds"),
        (("id: evals", "id: prod"), 2, "projects"),
        (("id: evals", "id: 'bad id!'"), 8, "projects.1.id"),
        (("weight: 2}]", "weight: 2}, {model: tiny}]"), 10, "projects.1.evaluation_ensemble"),
    ],
)
def test_a_bad_policy_names_its_line_and_field(
    tmp_path: Path, change: tuple[str, str], line: int, field: str
) -> None:
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    assert str(e.value).startswith(f"{path}:{line}: {field}: "), str(e.value)


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"policy.yaml:3: not valid YAML"):
        load_policy(_write(tmp_path, "projects:\n  - id: a\n  bad: [\n"))
    with pytest.raises(PolicyError, match="projects: Field required"):
        load_policy(_write(tmp_path, ""))
