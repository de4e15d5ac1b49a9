"""The readers-writer lock on an engine, across processes (real flock files, no engine needed).

Nothing here sleeps to let the other side get somewhere: a child process says where it is on its
stdout and waits for its cue on its stdin, and "process P is queued for the lock" is read from
the kernel (``/proc/locks`` lists each blocked ``flock`` waiter with ``->``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from openshell_core.retry import poll_until
from pytest_openshell.engine_access import EngineAccess

DEADLINE = 30.0

HOLD_SHARED = """
    import pathlib, sys
    from pytest_openshell.engine_access import EngineAccess
    with EngineAccess(pathlib.Path(sys.argv[1])).shared():
        print("shared", flush=True)
        sys.stdin.readline()
"""

UPGRADE = """
    import pathlib, sys
    from pytest_openshell.engine_access import EngineAccess
    access = EngineAccess(pathlib.Path(sys.argv[1]))
    with access.shared():
        print("shared", flush=True)
        sys.stdin.readline()
        with access.exclusive():
            print("exclusive", flush=True)
"""

WANT_EXCLUSIVE = """
    import pathlib, sys
    from pytest_openshell.engine_access import EngineAccess
    directory, got = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with EngineAccess(directory).exclusive():
        got.write_text("yes")
"""


def _spawn(code: str, *args: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _says(process: subprocess.Popen[bytes], word: str) -> None:
    """Wait until ``process`` prints ``word`` on a line; fails at once when it exits first."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], DEADLINE)
    assert ready, f"the child did not say {word!r} within {DEADLINE:g} s"
    line = process.stdout.readline().decode().strip()
    assert line == word, f"the child said {line!r} (exit code {process.poll()}), not {word!r}"


def _cue(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()


def _queued_for_a_lock(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is blocked in ``flock`` on one of the lock files in ``directory``."""
    inodes = {str(path.stat().st_ino) for path in directory.glob("*.lock")}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        blocked = len(fields) > 6 and fields[1] == "->" and fields[5] == str(pid)
        if blocked and fields[6].rsplit(":", 1)[-1] in inodes:
            return True
    return False


def _until_queued(pid: int, directory: Path, *, alive: subprocess.Popen[bytes] | None) -> None:
    def exited() -> str | None:
        code = alive.poll() if alive is not None else None
        return None if code is None else f"the process exited (code {code})"

    poll_until(
        lambda: _queued_for_a_lock(pid, directory),
        bool,
        timeout=DEADLINE,
        what=f"process {pid} queued for the engine lock",
        fail_fast=exited,
    )


def _stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def test_exclusive_use_waits_until_another_process_lets_go_of_shared_use(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    reader = _spawn(HOLD_SHARED, locks)
    try:
        _says(reader, "shared")
        access = EngineAccess(locks)
        entered = threading.Event()
        waited: list[float] = []

        def writer() -> None:
            with access.exclusive() as seconds:
                waited.append(seconds)
                entered.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        _until_queued(os.getpid(), locks, alive=None)
        assert not entered.is_set()
        released_at = time.monotonic()
        _cue(reader)
        assert entered.wait(DEADLINE), "exclusive use not granted once the reader let go"
        assert time.monotonic() >= released_at
        assert waited and waited[0] > 0
        thread.join(DEADLINE)
        assert reader.wait(timeout=DEADLINE) == 0
    finally:
        _stop(reader)


def test_two_processes_upgrading_to_exclusive_use_at_once_do_not_wait_for_each_other(
    tmp_path: Path,
) -> None:
    both = [_spawn(UPGRADE, tmp_path / "locks") for _ in range(2)]
    try:
        for process in both:
            _says(process, "shared")
        for process in both:
            _cue(process)
        for process in both:
            _says(process, "exclusive")
            assert process.wait(timeout=DEADLINE) == 0
    finally:
        _stop(*both)


def test_nested_uses_in_one_process_hold_the_strongest_mode(tmp_path: Path) -> None:
    access = EngineAccess(tmp_path)
    with access.shared():
        assert access.mode == "shared"
        with access.exclusive():
            assert access.mode == "exclusive"
        assert access.mode == "shared"
    assert access.mode == "none"


def test_going_back_from_exclusive_to_shared_use_lets_no_waiting_writer_in(
    tmp_path: Path,
) -> None:
    locks, got = tmp_path / "locks", tmp_path / "got"
    access = EngineAccess(locks)
    writer = None
    try:
        with access.shared():
            with access.exclusive():
                writer = _spawn(WANT_EXCLUSIVE, locks, got)
                _until_queued(writer.pid, locks, alive=writer)
                before = time.monotonic()
            # A writer that got in between would have written ``got`` before the downgrade
            # returned (the downgrade would have waited for it to leave).
            assert time.monotonic() - before < 0.5
            assert access.mode == "shared"
            assert not got.exists()
            # The conversion wakes the writer; it must queue again, not get in.
            _until_queued(writer.pid, locks, alive=writer)
            assert not got.exists()
        assert writer.wait(timeout=DEADLINE) == 0
        assert got.exists()
    finally:
        if writer is not None:
            _stop(writer)
