"""The gateway's SQLite store: sandboxes and SSH sessions, with a schema version and forward
migrations.

The store lives with the gateway's persistent state (``/var/lib/openshell/openshell.db``). Its
schema version is ``PRAGMA user_version``. :func:`open_store` checks a store read-only before it
touches it: a store written by newer code, or a corrupt one, is refused with
:class:`StoreTooNewError` or :class:`StoreCorruptError` and nothing on disk changes. Migrations run
forward only, each in one transaction together with the version bump.

Two schema targets exist, one per gateway image variant: ``v1`` stops at version 1, ``v2`` (the
image-upgrade scenario's target) runs one more migration that moves sandbox labels out of a JSON
column into their own table, so an upgrade converts data and is not a mere label change.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from openshell_core.errors import StateError
from openshell_core.server.model import Desired, Phase, SandboxRecord, SshSessionRecord

#: The header every SQLite 3 database file starts with.
_SQLITE_HEADER: Final = b"SQLite format 3\x00"


class StoreError(StateError):
    """The store cannot be used; the gateway must not start on it."""

    def __init__(self, message: str, *, path: Path, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class StoreTooNewError(StoreError):
    """The store was written by newer gateway code than this one."""

    def __init__(self, path: Path, *, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"store {path} has schema version {found}, newer than this gateway supports "
            f"({supported}); refusing to start, nothing was changed",
            path=path,
            hint="run the gateway image that wrote this store (or a newer one); downgrades are "
            "not supported",
        )


class StoreCorruptError(StoreError):
    """The store file is not a usable SQLite database of ours."""

    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"store {path} is corrupt ({reason}); refusing to start, nothing was changed",
            path=path,
            hint="restore the file from a backup, or move it away to start with an empty store "
            "(every sandbox record would be lost)",
        )


# -- migrations -------------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]


def _migration_1(conn: sqlite3.Connection) -> None:
    """The initial schema."""
    conn.execute(
        """
        CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            workspace TEXT NOT NULL,
            image TEXT NOT NULL,
            environment_json TEXT NOT NULL,
            labels_json TEXT NOT NULL,
            container_env_json TEXT NOT NULL, -- the sandbox's frozen environment (old name)
            host_key_public TEXT NOT NULL,
            host_key_fingerprint TEXT NOT NULL,
            desired TEXT NOT NULL,
            phase TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            workspace_created INTEGER NOT NULL DEFAULT 0,
            restart_count INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (workspace, name)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE ssh_sessions (
            token TEXT PRIMARY KEY,
            sandbox_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _migration_2(conn: sqlite3.Connection) -> None:
    """Labels move from a JSON column into their own table (queryable by label selectors)."""
    conn.execute(
        """
        CREATE TABLE sandbox_labels (
            sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (sandbox_id, key)
        )
        """
    )
    conn.execute(
        "INSERT INTO sandbox_labels (sandbox_id, key, value) "
        "SELECT sandboxes.id, entry.key, entry.value "
        "FROM sandboxes, json_each(sandboxes.labels_json) AS entry"
    )
    conn.execute("ALTER TABLE sandboxes DROP COLUMN labels_json")


#: Every migration, in order: migration ``i`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: Final[tuple[tuple[str, Migration], ...]] = (
    ("initial schema: sandboxes, ssh_sessions, meta", _migration_1),
    ("sandbox labels in their own table", _migration_2),
)

#: The schema version each gateway image variant runs at.
VARIANT_SCHEMA: Final[Mapping[str, int]] = {"v1": 1, "v2": 2}

_TABLES: Final[Mapping[int, frozenset[str]]] = {
    1: frozenset({"sandboxes", "ssh_sessions", "meta"}),
    2: frozenset({"sandboxes", "ssh_sessions", "meta", "sandbox_labels"}),
}


def schema_for_variant(variant: str) -> int:
    """The schema version the gateway image ``variant`` (``v1``, ``v2``) runs at."""
    try:
        return VARIANT_SCHEMA[variant]
    except KeyError:
        known = ", ".join(sorted(VARIANT_SCHEMA))
        raise StateError(
            f"unknown gateway variant {variant!r}", hint=f"known variants: {known}"
        ) from None


# -- opening ----------------------------------------------------------------------------------


def inspect_store(path: Path) -> int:
    """Check an existing store without changing it; return its schema version.

    :raises StoreCorruptError: when the file is not a healthy SQLite database with our tables.
    """
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreCorruptError(path, f"cannot read it: {exc.strerror or exc}") from exc
    if header != _SQLITE_HEADER:
        raise StoreCorruptError(path, "not an SQLite database")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreCorruptError(path, str(exc)) from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        check = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.Error as exc:
        raise StoreCorruptError(path, str(exc)) from exc
    finally:
        conn.close()
    if check != ["ok"]:
        raise StoreCorruptError(path, "integrity check failed: " + "; ".join(check[:3]))
    expected = _TABLES.get(version)
    if version > 0 and expected is not None and not expected <= tables:
        missing = ", ".join(sorted(expected - tables))
        raise StoreCorruptError(path, f"schema version {version} but tables missing: {missing}")
    if version == 0 and tables:
        raise StoreCorruptError(path, "tables present but no schema version")
    return version


#: What makes an acknowledged write durable (see :func:`open_store`); tests check they hold.
DURABILITY_PRAGMAS = ("journal_mode = DELETE", "synchronous = FULL")


def open_store(path: Path, *, schema: int) -> Store:
    """Open (creating or migrating forward) the store at ``path`` at schema version ``schema``.

    :raises StoreTooNewError: the store is at a version above ``schema`` (nothing changed).
    :raises StoreCorruptError: the store is unreadable or damaged (nothing changed).
    """
    if not 1 <= schema <= len(MIGRATIONS):
        raise ValueError(f"schema {schema} outside 1..{len(MIGRATIONS)}")
    found = inspect_store(path) if path.exists() else 0
    if found > schema:
        raise StoreTooNewError(path, found=found, supported=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    # Durability: the API answers a write only after its COMMIT returned (autocommit off, one
    # transaction per write), and with a rollback journal and synchronous=FULL, COMMIT returns
    # only once the journal and the database file are fsynced: an acknowledged write survives a
    # SIGKILL of the gateway and a power cut of the host; an unacknowledged one is rolled back
    # from the hot journal at the next open, whole.
    for pragma in DURABILITY_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    try:
        for version in range(found, schema):
            _, migrate = MIGRATIONS[version]
            conn.execute("BEGIN IMMEDIATE")
            try:
                migrate(conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreCorruptError(path, f"migration failed: {exc}") from exc
    return Store(conn, path=path, schema=schema)


# -- the store --------------------------------------------------------------------------------


class Store:
    """Typed access to one open store. Not thread-safe by itself: callers serialise access."""

    def __init__(self, conn: sqlite3.Connection, *, path: Path, schema: int) -> None:
        self._conn = conn
        self.path = path
        self.schema = schema

    def close(self) -> None:
        self._conn.close()

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- meta --

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- sandboxes --

    def insert_sandbox(self, record: SandboxRecord) -> None:
        """Add a sandbox; :class:`StoreConflict` when its name is taken in its workspace."""
        columns: dict[str, Any] = {
            "id": record.id,
            "name": record.name,
            "workspace": record.workspace,
            "image": record.image,
            "environment_json": json.dumps(dict(record.environment), sort_keys=True),
            "container_env_json": json.dumps(dict(record.sandbox_env), sort_keys=True),
            "host_key_public": record.host_key_public,
            "host_key_fingerprint": record.host_key_fingerprint,
            "desired": str(record.desired),
            "phase": str(record.phase),
            "reason": record.reason,
            "workspace_created": int(record.workspace_created),
            "restart_count": record.restart_count,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }
        if self.schema < 2:
            columns["labels_json"] = json.dumps(dict(record.labels), sort_keys=True)
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        try:
            with self._transaction() as conn:
                conn.execute(
                    f"INSERT INTO sandboxes ({names}) VALUES ({marks})", tuple(columns.values())
                )
                if self.schema >= 2:
                    conn.executemany(
                        "INSERT INTO sandbox_labels (sandbox_id, key, value) VALUES (?, ?, ?)",
                        [(record.id, key, value) for key, value in record.labels.items()],
                    )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(
                f"a sandbox named {record.name!r} already exists in workspace {record.workspace!r}"
            ) from exc

    def update_sandbox(self, sandbox_id: str, **changes: Any) -> SandboxRecord | None:
        """Change some fields of a sandbox (not its labels); returns the new record."""
        allowed = {"desired", "phase", "reason", "workspace_created", "restart_count", "image"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = {key: _column_value(value) for key, value in changes.items()}
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self._transaction() as conn:
            conn.execute(
                f"UPDATE sandboxes SET {assignments} WHERE id = ?", (*values.values(), sandbox_id)
            )
        return self.get_sandbox(sandbox_id)

    def delete_sandbox(self, sandbox_id: str) -> bool:
        """Forget a sandbox and its SSH sessions; False when it was not there."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM ssh_sessions WHERE sandbox_id = ?", (sandbox_id,))
            if self.schema >= 2:
                conn.execute("DELETE FROM sandbox_labels WHERE sandbox_id = ?", (sandbox_id,))
            cursor = conn.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
        return cursor.rowcount > 0

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._conn.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return None if row is None else self._record(row)

    def find_sandbox(self, workspace: str, name: str) -> SandboxRecord | None:
        row = self._conn.execute(
            "SELECT * FROM sandboxes WHERE workspace = ? AND name = ?", (workspace, name)
        ).fetchone()
        return None if row is None else self._record(row)

    def list_sandboxes(self, workspace: str | None = None) -> list[SandboxRecord]:
        """Sandboxes in ``workspace`` (all when None), oldest first."""
        if workspace is None:
            rows = self._conn.execute("SELECT * FROM sandboxes ORDER BY created_at, id")
        else:
            rows = self._conn.execute(
                "SELECT * FROM sandboxes WHERE workspace = ? ORDER BY created_at, id", (workspace,)
            )
        return [self._record(row) for row in rows.fetchall()]

    def _record(self, row: sqlite3.Row) -> SandboxRecord:
        if self.schema >= 2:
            labels = {
                str(label["key"]): str(label["value"])
                for label in self._conn.execute(
                    "SELECT key, value FROM sandbox_labels WHERE sandbox_id = ? ORDER BY key",
                    (row["id"],),
                )
            }
        else:
            labels = json.loads(row["labels_json"])
        return SandboxRecord(
            id=row["id"],
            name=row["name"],
            workspace=row["workspace"],
            image=row["image"],
            environment=json.loads(row["environment_json"]),
            labels=labels,
            sandbox_env=json.loads(row["container_env_json"]),
            host_key_public=row["host_key_public"],
            host_key_fingerprint=row["host_key_fingerprint"],
            desired=Desired(row["desired"]),
            phase=Phase(row["phase"]),
            reason=row["reason"],
            workspace_created=bool(row["workspace_created"]),
            restart_count=int(row["restart_count"]),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
        )

    # -- SSH sessions --

    def insert_session(self, session: SshSessionRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO ssh_sessions (token, sandbox_id, created_at, expires_at, revoked) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    session.token,
                    session.sandbox_id,
                    session.created_at,
                    session.expires_at,
                    int(session.revoked),
                ),
            )

    def get_session(self, token: str) -> SshSessionRecord | None:
        row = self._conn.execute("SELECT * FROM ssh_sessions WHERE token = ?", (token,)).fetchone()
        if row is None:
            return None
        return SshSessionRecord(
            token=row["token"],
            sandbox_id=row["sandbox_id"],
            created_at=float(row["created_at"]),
            expires_at=float(row["expires_at"]),
            revoked=bool(row["revoked"]),
        )

    def revoke_session(self, token: str) -> SshSessionRecord | None:
        """Mark a session revoked; returns it as it was before (None when unknown)."""
        before = self.get_session(token)
        if before is not None:
            with self._transaction() as conn:
                conn.execute("UPDATE ssh_sessions SET revoked = 1 WHERE token = ?", (token,))
        return before


def _column_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return value


class StoreConflict(StateError):
    """A write would break a uniqueness rule (a sandbox name taken in its workspace)."""
