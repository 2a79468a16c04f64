"""Request ids, one rule for every transport: the client's ``x-request-id`` if it is a sane
token, else a new one (HTTP: ``serving/api/request_id.py``; gRPC: ``rpc/interceptors.py``)."""

from __future__ import annotations

import re
import uuid

_SANE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")  # printable token: no spaces, no newlines


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def choose(client_value: bytes | None) -> str:
    """The client's id if it is a printable token of at most 128 characters (so that it can
    neither forge a log line nor bloat one), else a new id."""
    if client_value is not None and _SANE.fullmatch(client_value):
        return client_value.decode("ascii")
    return new_request_id()
