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


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["serve", "--dtype", "fp16"], {}, "bad setting dtype (--dtype / MODSERVE_DTYPE) = 'fp16'"),
        (["serve"], {"MODSERVE_PORT": "abc"}, "bad setting port (--port / MODSERVE_PORT) = 'abc'"),
        (["serve", "--log-level", "verbose"], {}, "bad setting log_level"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    argv: list[str], env: dict, needle: str, monkeypatch: pytest.MonkeyPatch, capsys
):
    from serving.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_log_level_is_case_insensitive():
    assert Settings(log_level="WARNING").log_level == "warning"


def test_the_server_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MODSERVE_HOST", raising=False)
    assert settings_from_args(build_parser().parse_args(["serve"])).host == "127.0.0.1"
    monkeypatch.setenv("MODSERVE_HOST", "0.0.0.0")  # what the image and the chart set
    assert settings_from_args(build_parser().parse_args(["serve"])).host == "0.0.0.0"
