"""An HTTP request body (every route): size limit, strict UTF-8, JSON; and hang-ups.

Whatever the bytes, the outcome is the parsed value or a 400/413 naming the problem, never
a 500: invalid UTF-8 (including encoded lone surrogates, ``ED A0 80``), JSON escapes of
lone surrogates (``"\\ud800"``, which Python's json accepts but no tokenizer or encoder
can use), and nesting too deep for the parser (thousands of ``[``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from starlette.requests import ClientDisconnect

from serving.errors import BodyTooLarge, ClientClosedRequest, InvalidRequest

T = TypeVar("T")

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(
            f"Request body is {declared} bytes; the limit is {limit} bytes "
            "(MODSERVE_MAX_REQUEST_BODY_BYTES)."
        )
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise BodyTooLarge(
                    f"Request body exceeds {limit} bytes (MODSERVE_MAX_REQUEST_BODY_BYTES)."
                )
    except ClientDisconnect:
        raise ClientClosedRequest("The client closed the connection mid-body.") from None
    return bytes(body)


def parse_json(body: bytes, what: str = "request") -> Any:
    """``body`` as JSON, or ``InvalidRequest`` saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(
            f"The {what} body is not valid UTF-8 (bad byte at offset {e.start})."
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your {what}: {e.msg} (line {e.lineno}, "
            f'column {e.colno}). Send a JSON object such as {{"input": "text"}}.'
        ) from None
    except RecursionError:
        raise InvalidRequest(f"The JSON body of your {what} is nested too deeply.") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then pay for the full check
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"The JSON body of your {what} contains a lone UTF-16 surrogate escape "
                "(such as \\ud800) that is not valid Unicode text."
            ) from None
        except RecursionError:
            raise InvalidRequest(f"The JSON body of your {what} is nested too deeply.") from None
    return value


async def read_json(request: Request, limit: int, what: str = "request") -> Any:
    """``read_body`` then ``parse_json``."""
    return parse_json(await read_body(request, limit), what)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` (after the body was read); if the client hangs up first, cancel it (its
    queued sequences are dropped before the model) and raise ``ClientClosedRequest``."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientClosedRequest("The client closed the connection before its answer.")
    return task.result()
