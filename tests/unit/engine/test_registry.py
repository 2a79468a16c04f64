"""The registry is ready only when every configured model is loaded, not after the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import Settings
from serving.engine import registry as registry_module
from serving.engine.metrics import Metrics
from serving.engine.registry import ModelRegistry
from tests.helpers import make_tiny_model_repo


async def test_not_ready_until_the_last_model_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tiny_model_repo(tmp_path, "m1", seed=1)
    make_tiny_model_repo(tmp_path, "m2", seed=2)
    reg = ModelRegistry(
        Settings(model_repo=tmp_path, model="m1", extra_models=["m2"], device="cpu", cpu_threads=1),
        Metrics(),
    )
    ready_when_loading: dict[str, bool] = {}
    real_load = registry_module.choose_and_load

    def load_and_look(path: Path, *args: object) -> object:
        ready_when_loading[path.name] = reg.ready
        return real_load(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module, "choose_and_load", load_and_look)
    await reg.start()
    try:
        assert ready_when_loading == {"m1": False, "m2": False}  # m1 up, m2 not yet: not ready
        assert reg.ready
    finally:
        await reg.stop()


def test_resolve_by_name_alias_and_version() -> None:
    """One resolution rule for every transport and both registries (local and Ray)."""
    from types import SimpleNamespace

    from serving.engine.registry import resolve_engine
    from serving.errors import ModelNotFound, NotReady

    tiny = SimpleNamespace(name="tiny", version="3")
    engines = {"tiny": tiny}
    expected = ["tiny", "other"]
    assert resolve_engine(None, "tiny", engines, expected) is tiny
    assert resolve_engine("omni-moderation-latest", "tiny", engines, expected) is tiny
    assert resolve_engine("tiny", "tiny", engines, expected, version="3") is tiny
    assert resolve_engine("tiny", "tiny", engines, expected, version="") is tiny
    with pytest.raises(ModelNotFound, match="no version '2'; served version: '3'") as e:
        resolve_engine("tiny", "tiny", engines, expected, version="2")
    assert e.value.param == "model_version"
    with pytest.raises(NotReady):
        resolve_engine("other", "tiny", engines, expected)
    with pytest.raises(ModelNotFound):
        resolve_engine("nope", "tiny", engines, expected)
