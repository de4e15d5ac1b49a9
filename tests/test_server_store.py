"""The gateway's SQLite store: schema versions, forward migrations, refusal of newer or corrupt
stores without touching them."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from openshell_core.server.model import Desired, Phase, SandboxRecord, SshSessionRecord
from openshell_core.server.store import (
    MIGRATIONS,
    StoreConflict,
    StoreCorruptError,
    StoreTooNewError,
    open_store,
    schema_for_variant,
)


def _record(sandbox_id: str = "sb-1", name: str = "alpha", **labels: str) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id,
        name=name,
        workspace="default",
        image="openshell-sandbox:v1",
        environment={"GREETING": "hello"},
        labels=labels or {"team": "red", "tier": "gold"},
        sandbox_env={"GREETING": "hello", "OPENSHELL_SANDBOX_ID": sandbox_id},
        host_key_public="ssh-ed25519 AAAA",
        host_key_fingerprint="SHA256:abc",
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_store_is_created_at_the_variants_schema_version(tmp_path: Path) -> None:
    for variant, version in (("v1", 1), ("v2", 2)):
        store = open_store(tmp_path / f"{variant}.db", schema=schema_for_variant(variant))
        assert store.version == version
        store.close()


def test_sandboxes_round_trip_through_the_store_at_every_schema(tmp_path: Path) -> None:
    for schema in (1, 2):
        store = open_store(tmp_path / f"s{schema}.db", schema=schema)
        store.insert_sandbox(_record())
        got = store.find_sandbox("default", "alpha")
        assert got is not None
        assert got.labels == {"team": "red", "tier": "gold"}
        assert got.environment == {"GREETING": "hello"}
        assert (got.desired, got.phase) == (Desired.RUNNING, Phase.PROVISIONING)
        updated = store.update_sandbox("sb-1", phase=Phase.READY, workspace_created=True)
        assert updated is not None
        assert (updated.phase, updated.workspace_created) == (Phase.READY, True)
        assert store.delete_sandbox("sb-1")
        assert store.list_sandboxes() == []
        store.close()


def test_a_sandbox_name_is_unique_within_its_workspace(tmp_path: Path) -> None:
    store = open_store(tmp_path / "openshell.db", schema=1)
    store.insert_sandbox(_record("sb-1", "alpha"))
    with pytest.raises(StoreConflict, match="already exists"):
        store.insert_sandbox(_record("sb-2", "alpha"))


def test_a_store_survives_being_closed_and_opened_again(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    store = open_store(path, schema=1)
    store.insert_sandbox(_record())
    store.insert_session(SshSessionRecord("tok", "sb-1", created_at=1.0, expires_at=0))
    store.close()
    again = open_store(path, schema=1)
    assert [r.id for r in again.list_sandboxes()] == ["sb-1"]
    session = again.get_session("tok")
    assert session is not None
    assert session.usable()


def test_the_v2_migration_moves_existing_labels_into_their_own_table(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    store = open_store(path, schema=1)
    store.insert_sandbox(_record("sb-1", "alpha", team="red"))
    store.insert_sandbox(_record("sb-2", "beta", team="blue", tier="silver"))
    store.close()

    upgraded = open_store(path, schema=2)

    assert upgraded.version == 2
    assert {r.name: dict(r.labels) for r in upgraded.list_sandboxes()} == {
        "alpha": {"team": "red"},
        "beta": {"team": "blue", "tier": "silver"},
    }
    with sqlite3.connect(path) as raw:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(sandboxes)")}
        rows = raw.execute("SELECT count(*) FROM sandbox_labels").fetchone()[0]
    assert "labels_json" not in columns
    assert rows == 3


def test_every_migration_has_a_description() -> None:
    assert all(description for description, _ in MIGRATIONS)


def test_a_store_newer_than_the_code_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    open_store(path, schema=2).close()
    before = _digest(path)

    with pytest.raises(StoreTooNewError) as caught:
        open_store(path, schema=1)

    assert "schema version 2, newer than this gateway supports (1)" in str(caught.value)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openshell.db"]


def test_a_file_that_is_not_a_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    path.write_bytes(b"this is not a database\n" * 100)
    before = _digest(path)

    with pytest.raises(StoreCorruptError, match="not an SQLite database"):
        open_store(path, schema=1)

    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openshell.db"]


def test_a_damaged_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    store = open_store(path, schema=1)
    for index in range(200):
        store.insert_sandbox(_record(f"sb-{index}", f"name-{index}"))
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page + 16 : page * 3] = b"\xff" * (page * 2 - 16)  # trash b-tree pages, keep the header
    path.write_bytes(bytes(data))
    before = _digest(path)

    with pytest.raises(StoreCorruptError, match="corrupt"):
        open_store(path, schema=1)

    assert _digest(path) == before


def test_a_database_without_our_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "openshell.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE unrelated (x)")
        raw.execute("PRAGMA user_version = 1")
    raw.close()

    with pytest.raises(StoreCorruptError, match="tables missing"):
        open_store(path, schema=1)


def test_revoked_and_expired_sessions_are_not_usable() -> None:
    assert not SshSessionRecord("t", "s", 0, 0, revoked=True).usable()
    assert not SshSessionRecord("t", "s", 0, expires_at=10).usable(now=11)
    assert SshSessionRecord("t", "s", 0, expires_at=10).usable(now=9)


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(Exception, match="unknown gateway variant"):
        schema_for_variant("v9")
