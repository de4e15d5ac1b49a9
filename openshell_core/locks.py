"""Lock files that exist only while they are held.

An advisory ``flock`` on a file is released by the kernel when its holder dies, but the file stays:
one per name ever locked. Here the holder unlinks the file before it lets go, and whoever takes the
lock checks, once it has it, that the file it locked is still the one at the path (a waiter that
got the lock on a file unlinked meanwhile opens the path again). So removing a lock file while
holding it never hands the lock to two holders, and a file left by a holder that died is removed
by the next one to find it unheld (:func:`remove_if_unheld`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``path``; the file is made for the holder and gone after it.

    :param on_wait: called once when another holder makes us wait.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(descriptor):
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            if _is_linked_at(descriptor, path):
                break
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)  # the holder before us removed the file we waited on: again
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still held: anyone waiting on this file will notice it is gone
        os.close(descriptor)


def remove_if_unheld(path: Path) -> bool:
    """Remove lock file ``path`` when nobody holds it; True when it was removed. A held lock is
    never touched (the check and the removal happen under the lock)."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if not _try_lock(descriptor) or not _is_linked_at(descriptor, path):
            return False
        path.unlink()
        return True
    finally:
        os.close(descriptor)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _is_linked_at(descriptor: int, path: Path) -> bool:
    """Whether the open file ``descriptor`` is the file at ``path`` now."""
    try:
        linked = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino)
