"""Responses carry every OpenAI category; what the model does not score is 0 / false and
named, never a silent "safe"; ``model`` echoes what OpenAI echoes for an alias."""

from __future__ import annotations

import numpy as np
from openai.types import ModerationCreateResponse

from serving.categories import CORE_WIRE_NAMES, WIRE_NAMES
from serving.protocol.openai import build_response, echoed_model, unscored_categories


def test_a_model_without_illicit_heads_answers_13_and_names_the_two_it_does_not_score():
    cats = list(CORE_WIRE_NAMES)  # 11: what version 1 of the default model scores
    scores = np.linspace(0.05, 0.95, len(cats), dtype=np.float32)[None, :]
    flags = scores > 0.5
    body = build_response("m", cats, scores, flags)
    ModerationCreateResponse.model_validate(body)  # the SDK's strict schema accepts it
    result = body["results"][0]
    assert list(result["category_scores"]) == list(WIRE_NAMES)
    assert result["unscored_categories"] == ["illicit", "illicit/violent"]
    assert result["category_scores"]["illicit"] == 0.0 and not result["categories"]["illicit"]
    for j, w in enumerate(cats):  # the scored ones are untouched
        assert result["category_scores"][w] == float(scores[0, j])
        assert result["categories"][w] == bool(flags[0, j])
    assert result["flagged"] == bool(flags.any())
    assert unscored_categories(cats) == ["illicit", "illicit/violent"]
    assert unscored_categories(list(WIRE_NAMES)) == []


def test_echoed_model():
    assert echoed_model("omni-moderation-latest", "m") == "omni-moderation-latest"
    assert echoed_model("text-moderation-stable", "m") == "text-moderation-007"
    assert echoed_model(None, "m") == "m" and echoed_model("m", "m") == "m"
