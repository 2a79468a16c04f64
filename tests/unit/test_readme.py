"""README stays true: every setting is documented in the configuration table."""

from __future__ import annotations

from pathlib import Path

from serving.config import RayServeSettings, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table():
    text = README.read_text()
    missing = [n for n in Settings.model_fields if f"`MODSERVE_{n.upper()}`" not in text]
    assert not missing, f"document these settings in README.md: {missing}"
    ray_fields = RayServeSettings.model_fields
    missing = [n for n in ray_fields if f"`MODSERVE_RAY_{n.upper()}`" not in text]
    assert not missing, f"document these Ray settings in README.md: {missing}"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make serve" in text and "make test" in text
