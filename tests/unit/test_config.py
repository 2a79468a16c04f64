"""Settings from flags and environment: the same parsing either way."""

from __future__ import annotations

import pytest

from serving.cli import build_parser, settings_from_args
from serving.config import Settings


def test_api_keys_from_the_flag_are_split_and_stripped_like_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
):
    args = build_parser().parse_args(["serve", "--api-keys", " a, b ,,c "])
    assert settings_from_args(args).api_keys == ["a", "b", "c"]
    monkeypatch.setenv("MODSERVE_API_KEYS", " a, b ,,c ")
    assert Settings().api_keys == ["a", "b", "c"]
