"""Static bearer keys (``MODSERVE_API_KEYS``) for every transport: HTTP, KServe, gRPC."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from serving.errors import Unauthorized


def check_bearer(header: str | None, keys: Sequence[str]) -> None:
    """Pass when no keys are configured or ``header`` is ``Bearer <one of keys>``."""
    if not keys:
        return
    scheme, _, key = (header or "").partition(" ")
    ok = scheme.lower() == "bearer" and any(
        hmac.compare_digest(key.strip().encode(), k.encode()) for k in keys
    )
    if not ok:
        raise Unauthorized(
            "Incorrect API key provided. Send 'authorization: Bearer <key>' "
            "with a key from MODSERVE_API_KEYS."
        )
