"""The record a gateway keeps on its volume, and the store header it falls back on (pure logic)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from openshell_core.state_record import (
    RECORD_FILE,
    StateRecord,
    image_store_schema,
    store_schema_of,
    write_record,
)


def test_a_written_record_reads_back_the_same(tmp_path: Path) -> None:
    record = StateRecord("openshell-gateway:v2", 2)
    path = write_record(tmp_path / "state", record)
    assert path == tmp_path / "state" / RECORD_FILE
    assert StateRecord.parse(path.read_bytes()) == record
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"image": 1, "store_schema": 2}', b'{"image": "x", "store_schema": true}'],
)
def test_a_file_that_is_not_a_record_is_ignored(data: bytes) -> None:
    assert StateRecord.parse(data) is None


def test_the_store_schema_comes_from_the_sqlite_header(tmp_path: Path) -> None:
    store = tmp_path / "openshell.db"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    assert store_schema_of(store.read_bytes()) == 2
    assert store_schema_of(b"not a database at all, but long enough to have a header" * 2) is None


def test_an_image_says_its_store_schema_in_a_label() -> None:
    assert image_store_schema({"openshell.ai/store-schema": "2"}) == 2
    assert image_store_schema({"openshell.ai/store-schema": "two"}) is None
    assert image_store_schema(None) is None
