"""The store keeps what the gateway acknowledged: a write whose answer was given survives a
SIGKILL of the process that made it, and the settings that make it so are in force. The
``ack-before-commit`` fault store is the control: the same kill loses its writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openshell_core.retry import poll_until
from openshell_core.server.store import open_store, schema_for_variant

SCHEMA = schema_for_variant("v2")

#: A child that opens the store, creates one sandbox record, says so, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from openshell_core.server.model import SandboxRecord
    from openshell_core.server.store import open_store
    from openshell_core.server.durability_faults import UncommittedStore
    path, schema, uncommitted, acked = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    store = open_store(path, schema=schema)
    if uncommitted == "yes":
        store = UncommittedStore.over(store)
    store.insert_sandbox(SandboxRecord(
        id="sb-1", name="alpha", workspace="default", image="img", environment={"A": "1"},
        labels={"team": "red"}, sandbox_env={}, host_key_public="k", host_key_fingerprint="f",
    ))
    Path(acked).write_text("acknowledged")
    while True:
        time.sleep(60)
    """
)


def _write_then_kill(tmp_path: Path, *, uncommitted: bool) -> Path:
    store, acked = tmp_path / "state.db", tmp_path / "acked"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), str(SCHEMA), "yes" if uncommitted else "no",
         str(acked)],
    )  # fmt: skip
    try:
        poll_until(
            acked.exists,
            bool,
            timeout=60,
            what="the child's acknowledged write",
            fail_fast=lambda: None if child.poll() is None else f"it exited {child.returncode}",
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return store


def test_an_acknowledged_write_survives_a_sigkill_of_its_writer(tmp_path: Path) -> None:
    store = open_store(_write_then_kill(tmp_path, uncommitted=False), schema=SCHEMA)
    found = store.get_sandbox("sb-1")
    assert found is not None
    assert (found.name, dict(found.labels), dict(found.environment)) == (
        "alpha",
        {"team": "red"},
        {"A": "1"},
    )


def test_the_ack_before_commit_store_loses_an_acknowledged_write_to_the_same_kill(
    tmp_path: Path,
) -> None:
    store = open_store(_write_then_kill(tmp_path, uncommitted=True), schema=SCHEMA)
    assert store.get_sandbox("sb-1") is None
    assert store.list_sandboxes() == []


@pytest.mark.parametrize(
    ("pragma", "expected"), [("journal_mode", "delete"), ("synchronous", 2)], ids=str
)
def test_the_store_commits_with_a_rollback_journal_and_full_fsync(
    tmp_path: Path, pragma: str, expected: object
) -> None:
    store = open_store(tmp_path / "state.db", schema=SCHEMA)
    assert store._conn.execute(f"PRAGMA {pragma}").fetchone()[0] == expected
