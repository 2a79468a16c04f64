"""API keys: each belongs to one project, carries scopes, may expire; stored hashed.

A key reads ``msk_<key id>_<secret>``: the key id (12 hex characters) is public (logs,
audit records, ``modserve keys list``), the secret (32 random bytes) is shown once, when
the key is created, and only its SHA-256 is stored. A fast hash is the right one here:
the secret is 256 random bits, so no guessing attack exists for a slow hash to slow down,
and every request checks a key.

``KeyStore`` is the interface the server uses; ``SqliteKeyStore`` implements it in one
file (``MODSERVE_KEY_STORE``) that several server processes on one host can share (SQLite
locks it; WAL mode lets readers run beside a writer). A Postgres store would implement the
same four methods. Lookups are cached in memory for ``cache_s`` seconds
(``MODSERVE_KEY_CACHE_S``): a revoked or expired key stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCOPES = ("moderate", "evaluate", "kserve", "admin")
KEY_PREFIX = "msk_"
KEY_PATTERN = re.compile(r"^msk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    project_id: str
    scopes: frozenset[str]
    created_at: float  # epoch seconds
    expires_at: float | None = None
    revoked_at: float | None = None
    name: str = ""

    def usable(self, now: float) -> bool:
        expired = self.expires_at is not None and now >= self.expires_at
        return self.revoked_at is None and not expired

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"


class KeyStore(Protocol):
    def create(
        self, project_id: str, scopes: Iterable[str], expires_at: float | None, name: str = ""
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the full key (shown once; only its hash is kept)."""
        ...

    def verify(self, presented: str) -> KeyRecord | None:
        """The record of a usable key, None for anything else (unknown, wrong, revoked,
        expired, malformed); constant time in the secret."""
        ...

    def list(self, project_id: str | None = None) -> list[KeyRecord]: ...

    def revoke(self, key_id: str) -> bool:
        """True if the key existed and was not revoked yet."""
        ...


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    out = frozenset(scopes)
    unknown = sorted(out - set(SCOPES))
    if unknown or not out:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {sorted(out)}")
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_project ON api_keys(project_id);
"""


class SqliteKeyStore:
    """``KeyStore`` in one SQLite file. Thread-safe; one connection per store."""

    def __init__(self, path: Path, cache_s: float = 5.0) -> None:
        self.path = Path(path)
        self.cache_s = cache_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()
        self.path.chmod(0o600)  # hashes only, but nobody else needs to read them
        self._cache: dict[str, tuple[float, KeyRecord | None, str]] = {}

    def create(
        self, project_id: str, scopes: Iterable[str], expires_at: float | None, name: str = ""
    ) -> tuple[KeyRecord, str]:
        record = KeyRecord(
            key_id=secrets.token_hex(6),
            project_id=project_id,
            scopes=check_scopes(scopes),
            created_at=time.time(),
            expires_at=expires_at,
            name=name,
        )
        secret = secrets.token_urlsafe(32)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    record.key_id,
                    project_id,
                    ",".join(sorted(record.scopes)),
                    _digest(secret),
                    name,
                    record.created_at,
                    expires_at,
                ),
            )
        return record, f"{KEY_PREFIX}{record.key_id}_{secret}"

    def verify(self, presented: str) -> KeyRecord | None:
        match = KEY_PATTERN.match(presented)
        if match is None:
            return None
        key_id, secret = match.groups()
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is None or now - hit[0] > self.cache_s:
            record, digest = self._fetch(key_id)
            hit = (now, record, digest)
            self._cache[key_id] = hit
        _, record, digest = hit
        if record is None or not hmac.compare_digest(_digest(secret), digest):
            return None
        return record if record.usable(time.time()) else None

    def list(self, project_id: str | None = None) -> list[KeyRecord]:
        query = "SELECT * FROM api_keys"
        args: tuple[str, ...] = ()
        if project_id is not None:
            query, args = query + " WHERE project_id = ?", (project_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at", args).fetchall()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        self._cache.pop(key_id, None)
        return cur.rowcount == 1

    def _fetch(self, key_id: str) -> tuple[KeyRecord | None, str]:
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return (None, "") if row is None else (_record(row), row[3])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple) -> KeyRecord:
    key_id, project_id, scopes, _, name, created, expires, revoked = row
    return KeyRecord(
        key_id=key_id,
        project_id=project_id,
        scopes=frozenset(s for s in scopes.split(",") if s),
        created_at=created,
        expires_at=expires,
        revoked_at=revoked,
        name=name,
    )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError(f"duration {text!r}: use a number and one of s, m, h, d, w (e.g. 30d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]
