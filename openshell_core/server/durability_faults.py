"""The two durability faults: acknowledgements that run ahead of the data (testing aids).

- ``ack-before-commit``: the store's writes go into one transaction that is committed only when
  the gateway closes its store (a clean stop). Every answer the API gives reads that transaction,
  so the gateway looks right, until it is killed: SQLite then rolls the uncommitted transaction
  back on the next open, and every sandbox created (or deleted, stopped) since the start is as if
  never acknowledged.
- ``lost-append``: an exec whose command appends to a file (``>>``) is answered at once with exit
  0 and run :data:`WRITE_CACHE_SECONDS` later, from a write cache held in the gateway's memory; a
  kill of the gateway drops the cache.

The history checker (property 18) must catch both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from openshell_core.server.store import Store

log = logging.getLogger("openshell.server")

#: Seconds an append waits in the lost-append write cache.
WRITE_CACHE_SECONDS = 20.0


class UncommittedStore(Store):
    """A :class:`Store` whose writes are committed only by :meth:`close` (``ack-before-commit``)."""

    _open = False

    @classmethod
    def over(cls, store: Store) -> UncommittedStore:
        return cls(store._conn, path=store.path, schema=store.schema)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if not self._open:
            self._conn.execute("BEGIN IMMEDIATE")
            self._open = True
        # A savepoint per write: a failed write undoes itself, not the writes before it.
        self._conn.execute("SAVEPOINT write")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK TO write")
            self._conn.execute("RELEASE write")
            raise
        self._conn.execute("RELEASE write")

    def close(self) -> None:
        if self._open:
            self._conn.execute("COMMIT")
            self._open = False
        super().close()


def is_append(command: Sequence[str]) -> bool:
    """Whether an exec's command appends to a file (what the lost-append cache holds back)."""
    return any(">>" in part for part in command)


def cache_write(
    spawn: Callable[[Any], None], run: Callable[[], AsyncIterator[Any]], what: str
) -> None:
    """Run the exec ``run`` makes :data:`WRITE_CACHE_SECONDS` from now, in the background."""

    async def later() -> None:
        await asyncio.sleep(WRITE_CACHE_SECONDS)
        async for _ in run():
            pass
        log.info("fault lost-append: cached write %s reached the sandbox", what)

    spawn(later())
