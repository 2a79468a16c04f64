"""The bearer-key check as one FastAPI dependency, for every route that needs a key."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import Request

from serving.auth import check_bearer


def require_api_key(keys: Sequence[str]) -> Callable[[Request], None]:
    """``Depends(require_api_key(settings.api_keys))``: 401 unless the request carries
    ``authorization: Bearer <key>`` with one of ``keys`` (no keys: every request passes)."""

    def check(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), keys)

    return check
