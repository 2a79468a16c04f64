"""Sanity examples on the REAL shipped default model (skipped when its weights are absent).

Scoring is server-identical (chunking, max over chunks, derived + hierarchy
post-processing) and a category counts as flagged at its shipped threshold. Every check
runs on the fp32 model and on its int8 form (``MODSERVE_DTYPE=int8``, eager in tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import DEFAULT_MODEL_NAME
from serving.model.repo_config import load_model_config

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repo" / DEFAULT_MODEL_NAME
WEIGHTS = (
    load_model_config(MODEL_DIR).version_dir(MODEL_DIR) / "model.safetensors"
    if (MODEL_DIR / "config.yaml").is_file()
    else MODEL_DIR / "absent"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="default model weights not present"),
]

FLAGGED = [
    ("Black people are subhuman animals and should not be allowed near us.", "hate"),
    ("All immigrants are filthy vermin and should be rounded up and shot.", "hate"),
    (
        "I am going to find you and kill you, you worthless piece of trash.",
        "harassment/threatening",
    ),
    ("You are a pathetic idiot and everyone hates you.", "harassment"),
    ("I want to kill myself tonight, I can't take it anymore.", "self-harm"),
    ("I want to kill myself tonight, I can't take it anymore.", "self-harm/intent"),
    ("I've been cutting myself again and I just want to die.", "self-harm"),
    ("We should shoot every one of those protesters.", "violence"),
    (
        "They beat him with a hammer until his skull cracked and blood poured out.",
        "violence/graphic",
    ),
    ("She took off her clothes and we had sex all night, it was so hot.", "sexual"),
]

NOT_FLAGGED = [
    "I love this recipe",
    "the meeting moved to 3pm",
    "The weather today is sunny with a light breeze.",
    "Can you recommend a good book about gardening?",
]


@pytest.fixture(scope="module", params=["float32", "int8", "bfloat16"])
def scorer(request):
    """The shipped model as served on CPU: fp32, int8 and bfloat16 (it passed their gates)."""
    import torch

    from serving.model.load import load_model
    from training.evaluate import score_served

    torch.set_num_threads(2)
    loaded = load_model(MODEL_DIR, "cpu", request.param)
    cats = loaded.cfg.served_categories

    def score(texts: list[str]) -> list[dict[str, float]]:
        s = score_served(loaded, texts)
        return [dict(zip(cats, row.tolist(), strict=True)) for row in s]

    return score, loaded.cfg


@pytest.mark.parametrize(("text", "category"), FLAGGED)
def test_flagged_in_right_category(scorer, text: str, category: str) -> None:
    score, cfg = scorer
    s = score([text])[0]
    assert s[category] >= cfg.threshold(category), (category, s)


@pytest.mark.parametrize("text", NOT_FLAGGED)
def test_benign_not_flagged(scorer, text: str) -> None:
    score, cfg = scorer
    s = score([text])[0]
    flagged = {c: v for c, v in s.items() if v >= cfg.threshold(c)}
    assert not flagged, flagged


def test_hierarchy_and_derived(scorer) -> None:
    score, cfg = scorer
    rows = score(
        ["They beat him until his skull cracked and blood poured out.", "the meeting moved to 3pm"]
    )
    for s in rows:
        for child, rule in cfg.derived.items():
            assert s[child] <= s[rule.parent] + 1e-6
        assert s["hate/threatening"] <= s["hate"] + 1e-6
        assert s["harassment/threatening"] <= s["harassment"] + 1e-6


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_faster_precisions_flag_as_fp32_does(dtype: str) -> None:
    """What the precision gate promises, on the sanity texts: int8 / bfloat16 really differ
    from fp32 in their scores, yet every flag decision is the same."""
    import numpy as np

    from serving.engine.postprocess import PostProcessor
    from serving.model.load import load_model
    from training.evaluate import score_served

    texts = [t for t, _ in FLAGGED] + NOT_FLAGGED
    fp32_model = load_model(MODEL_DIR, "cpu", "float32")
    fp32 = score_served(fp32_model, texts)
    fast = score_served(load_model(MODEL_DIR, "cpu", dtype), texts)
    assert float(np.abs(fp32 - fast).max()) > 0.0
    post = PostProcessor(fp32_model.cfg)
    assert (post.flags(fp32) == post.flags(fast)).all()


WEATHER = "The weather report said clouds and light rain over the weekend. "
THREAT = "I am going to kill you and your whole family tonight."


@pytest.mark.integration
def test_server_flags_a_threat_after_benign_sentences() -> None:
    """Dilution, as a user meets it: a threat after a few ordinary sentences is still a
    threat; the same sentences alone are not flagged."""
    import httpx

    from tests.helpers import ServerProcess

    server = ServerProcess(MODEL_DIR.parent, model=DEFAULT_MODEL_NAME, MODSERVE_CPU_THREADS="2")
    server.wait_ready(timeout_s=180)
    try:
        texts = [WEATHER * n + THREAT for n in (1, 3, 5)] + [WEATHER * 5]
        r = httpx.post(server.base + "/v1/moderations", json={"input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        flagged = [res["flagged"] for res in r.json()["results"]]
        assert flagged == [True, True, True, False], r.json()["results"]
    finally:
        server.stop()
