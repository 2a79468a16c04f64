"""Read an HTTP request body under ``MODSERVE_MAX_REQUEST_BODY_BYTES`` (every route)."""

from __future__ import annotations

from fastapi import Request

from serving.errors import BodyTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(
            f"Request body is {declared} bytes; the limit is {limit} bytes "
            "(MODSERVE_MAX_REQUEST_BODY_BYTES)."
        )
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise BodyTooLarge(
                f"Request body exceeds {limit} bytes (MODSERVE_MAX_REQUEST_BODY_BYTES)."
            )
    return bytes(body)
