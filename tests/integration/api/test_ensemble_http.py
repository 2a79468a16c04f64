"""An ensemble from model_repo served next to its members, chosen by the request's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest
import yaml

from tests.helpers import ServerProcess, make_tiny_model_repo

pytestmark = pytest.mark.integration


def test_ensemble_scores_are_weighted_mean_of_members(tmp_path: Path):
    make_tiny_model_repo(tmp_path, "m1", seed=1)
    make_tiny_model_repo(tmp_path, "m2", seed=2)
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "config.yaml").write_text(
        yaml.safe_dump(
            {"name": "ens", "members": {"m1": 3.0, "m2": 1.0}, "combine": "weighted_mean"}
        )
    )
    s = ServerProcess(tmp_path, model="m1", MODSERVE_EXTRA_MODELS="ens")
    s.wait_ready()
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0)
        assert {"m1", "m2", "ens"} <= {m.id for m in client.models.list()}
        text = ["some words to score"]
        r1, r2, e = (
            client.moderations.create(input=text, model=m).results[0] for m in ("m1", "m2", "ens")
        )
        s1, s2, se = (x.category_scores.model_dump(by_alias=True) for x in (r1, r2, e))
        for cat, value in se.items():
            if value is not None:
                assert value == pytest.approx(0.75 * s1[cat] + 0.25 * s2[cat], abs=1e-5)
        agreement = e.model_extra["model_agreement"]
        expect = np.mean([r1.flagged == e.flagged, r2.flagged == e.flagged])
        assert agreement == pytest.approx(expect)
    finally:
        s.stop()
