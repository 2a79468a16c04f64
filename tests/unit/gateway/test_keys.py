"""The key store: keys work until revoked or expired, only hashes are on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.gateway.keys import SqliteKeyStore, parse_duration_s


def test_key_lifecycle(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.db", cache_s=0)
    record, key = store.create("prod", ["moderate", "evaluate"], None, name="ci")
    assert key.startswith(f"msk_{record.key_id}_")
    found = store.verify(key)
    assert found is not None and found.project_id == "prod"
    assert found.scopes == frozenset({"moderate", "evaluate"}) and found.name == "ci"
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    for bad in (wrong, "msk_x", "", "Bearer " + key, key + "x" * 200):
        assert store.verify(bad) is None
    assert [r.key_id for r in store.list()] == [record.key_id]
    assert store.list("other") == []
    assert store.revoke(record.key_id) and not store.revoke(record.key_id)
    assert store.verify(key) is None
    assert store.list()[0].state(time.time()) == "revoked"


def test_only_the_hash_is_stored_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = SqliteKeyStore(path, cache_s=0)
    _, key = store.create("prod", ["moderate"], None)
    secret = key.rsplit("_", 1)[1]
    store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in on_disk
    assert path.stat().st_mode & 0o077 == 0
    assert SqliteKeyStore(path, cache_s=0).verify(key) is not None  # survives a restart


def test_expiry_and_a_second_process_sharing_the_store(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    one, other = SqliteKeyStore(path, cache_s=0), SqliteKeyStore(path, cache_s=0)
    rec, key = one.create("prod", ["kserve"], time.time() - 1)
    assert other.verify(key) is None and one.list()[0].state(time.time()) == "expired"
    rec, key = one.create("prod", ["kserve"], time.time() + 3600)
    assert other.verify(key) is not None
    one.revoke(rec.key_id)
    assert other.verify(key) is None


def test_the_cache_holds_a_revoked_key_only_for_its_time(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    server, admin = SqliteKeyStore(path, cache_s=0.2), SqliteKeyStore(path, cache_s=0)
    rec, key = admin.create("prod", ["moderate"], None)
    assert server.verify(key) is not None
    admin.revoke(rec.key_id)
    assert server.verify(key) is not None  # cached
    time.sleep(0.25)
    assert server.verify(key) is None


def test_scopes_and_durations_are_checked(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.db")
    with pytest.raises(ValueError, match="scopes must be some of"):
        store.create("prod", ["moderate", "root"], None)
    with pytest.raises(ValueError, match="scopes must be some of"):
        store.create("prod", [], None)
    assert parse_duration_s("30d") == 30 * 86400 and parse_duration_s("90s") == 90
    assert parse_duration_s("1.5h") == 5400
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s("soon")
