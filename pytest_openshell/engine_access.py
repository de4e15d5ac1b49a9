"""Sharing one engine between tests, workers and runs: a readers-writer lock.

Ordinary tests use the engine *shared*. A scenario that restarts or crashes the daemon disturbs
every gateway on it, so it uses the engine *exclusively*: it waits for the work in flight to
finish, and new work waits for it.

The lock is made of ``flock`` locks on two files next to the engine, so it works across xdist
workers and independent pytest runs:

- ``usage.lock``: shared by readers, exclusive for a writer;
- ``gate.lock``: a turnstile. A writer holds it exclusively while it waits for ``usage.lock``, and
  every reader passes through it first, so a stream of readers cannot starve a writer.

Within one process the lock is reentrant: nested shared and exclusive uses are counted, and the
process holds the strongest mode any of them needs (a single file descriptor, converted between
modes), so a test holding shared use can enter an exclusive scenario without deadlocking itself.
An upgrade lets go of shared use before it queues for exclusive use, so two processes upgrading at
once cannot wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from openshell_core.engine import Engine

log = logging.getLogger("openshell.plugin")


def lock_dir(engine: Engine) -> Path:
    if engine.private is not None:
        return engine.private.root
    digest = hashlib.sha256(engine.host.encode()).hexdigest()[:16]
    return Path("/tmp") / f"pytest-openshell-{digest}"


class EngineAccess:
    """Shared or exclusive use of one engine (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._mutex = threading.RLock()
        self._shared = 0
        self._exclusive = 0
        self._usage: IO[str] | None = None
        self._mode = 0  # 0 (unlocked), fcntl.LOCK_SH or fcntl.LOCK_EX

    def shared(self) -> contextlib.AbstractContextManager[float]:
        """Use the engine alongside others; yields the seconds spent waiting."""
        return self._use(exclusive=False)

    def exclusive(self) -> contextlib.AbstractContextManager[float]:
        """Use the engine alone (daemon restart, crash); yields the seconds spent waiting."""
        return self._use(exclusive=True)

    @property
    def mode(self) -> str:
        return {0: "none", fcntl.LOCK_SH: "shared", fcntl.LOCK_EX: "exclusive"}[self._mode]

    @contextlib.contextmanager
    def _use(self, *, exclusive: bool) -> Iterator[float]:
        with self._mutex:
            if exclusive:
                self._exclusive += 1
            else:
                self._shared += 1
            started = time.monotonic()
            try:
                self._apply()
            except BaseException:
                self._forget(exclusive)
                raise
            waited = time.monotonic() - started
        if waited > 1:
            log.info(
                "waited %.1f s for %s use of the engine",
                waited,
                "exclusive" if exclusive else "shared",
            )
        try:
            yield waited
        finally:
            with self._mutex:
                self._forget(exclusive)

    def _forget(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive -= 1
        else:
            self._shared -= 1
        self._apply()

    def _apply(self) -> None:
        wanted = fcntl.LOCK_EX if self._exclusive else fcntl.LOCK_SH if self._shared else 0
        if wanted == self._mode:
            return
        if wanted == 0:
            assert self._usage is not None
            fcntl.flock(self._usage, fcntl.LOCK_UN)
            self._usage.close()
            self._usage = None
        else:
            if self._usage is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._usage = (self.directory / "usage.lock").open("a")
            if wanted == fcntl.LOCK_EX:
                if self._mode == fcntl.LOCK_SH:
                    # Let go of shared use first: waiting at the turnstile while still holding it
                    # would deadlock with another process upgrading at the same time.
                    fcntl.flock(self._usage, fcntl.LOCK_UN)
                # Hold the turnstile while waiting, so that new readers queue behind us.
                with self._gate(fcntl.LOCK_EX):
                    fcntl.flock(self._usage, fcntl.LOCK_EX)
            elif self._mode == fcntl.LOCK_EX:
                # Downgrade. Linux converts a flock lock under one kernel lock, so a writer
                # waiting for the file cannot get in between (a test checks this): the checks
                # after a daemon scenario run shared, and no other daemon restart precedes them.
                fcntl.flock(self._usage, fcntl.LOCK_SH)
            else:
                with self._gate(fcntl.LOCK_SH):
                    fcntl.flock(self._usage, fcntl.LOCK_SH)
        self._mode = wanted

    @contextlib.contextmanager
    def _gate(self, mode: int) -> Iterator[None]:
        with (self.directory / "gate.lock").open("a") as gate:
            fcntl.flock(gate, mode)
            try:
                yield
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
