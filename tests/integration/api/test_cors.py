"""CORS headers only when MODSERVE_CORS_ORIGINS allows the caller's origin."""

from __future__ import annotations

from pathlib import Path

import httpx


async def test_cors_only_for_the_configured_origins(tiny_repo: Path):
    from serving.api.http import create_http_app
    from serving.config import Settings
    from serving.engine.metrics import Metrics
    from serving.engine.registry import ModelRegistry

    settings = Settings(model_repo=tiny_repo, model="tiny", cors_origins="https://a.example")
    app = create_http_app(ModelRegistry(settings, Metrics()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ok = await c.options(
            "/v1/moderations",
            headers={"origin": "https://a.example", "access-control-request-method": "POST"},
        )
        assert ok.headers["access-control-allow-origin"] == "https://a.example"
        other = await c.get("/health", headers={"origin": "https://b.example"})
        assert "access-control-allow-origin" not in other.headers
