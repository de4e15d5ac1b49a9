"""The readers-writer lock on an engine, across processes (real flock files, no engine needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from pytest_openshell.engine_access import EngineAccess

HOLD_SHARED = """
    import pathlib, sys, time
    from pytest_openshell.engine_access import EngineAccess
    directory, flag = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with EngineAccess(directory).shared():
        (flag.parent / "held").write_text("yes")
        while not flag.exists():
            time.sleep(0.02)
"""

UPGRADE = """
    import pathlib, sys, time
    from pytest_openshell.engine_access import EngineAccess
    directory, start = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    access = EngineAccess(directory)
    with access.shared():
        while not start.exists():
            time.sleep(0.01)
        with access.exclusive():
            time.sleep(0.2)
"""

WANT_EXCLUSIVE = """
    import pathlib, sys, time
    from pytest_openshell.engine_access import EngineAccess
    directory, got = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with EngineAccess(directory).exclusive():
        got.write_text("yes")
        time.sleep(1.0)
"""


def _spawn(code: str, *args: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)])


def test_exclusive_use_waits_until_another_process_lets_go_of_shared_use(tmp_path: Path) -> None:
    release = tmp_path / "release"
    reader = _spawn(HOLD_SHARED, tmp_path / "locks", release)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "held").exists():
            assert reader.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        access = EngineAccess(tmp_path / "locks")
        releaser = threading.Timer(0.5, release.write_text, args=("go",))
        release_at = time.monotonic() + 0.5
        releaser.start()
        with access.exclusive() as waited:
            assert time.monotonic() >= release_at
            assert waited > 0.3
            assert access.mode == "exclusive"
        releaser.join()
    finally:
        release.write_text("go")
        reader.wait(timeout=30)


def test_two_processes_upgrading_to_exclusive_use_at_once_do_not_wait_for_each_other(
    tmp_path: Path,
) -> None:
    start = tmp_path / "start"
    both = [_spawn(UPGRADE, tmp_path / "locks", start) for _ in range(2)]
    try:
        time.sleep(1.0)  # both hold shared use now
        start.write_text("go")
        for process in both:
            assert process.wait(timeout=30) == 0
    finally:
        for process in both:
            if process.poll() is None:
                process.kill()
                process.wait()


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
    got = tmp_path / "got"
    access = EngineAccess(tmp_path / "locks")
    writer = None
    try:
        with access.shared():
            with access.exclusive():
                writer = _spawn(WANT_EXCLUSIVE, tmp_path / "locks", got)
                time.sleep(1.0)  # the writer waits for exclusive use now
                assert writer.poll() is None and not got.exists()
                before = time.monotonic()
            assert time.monotonic() - before < 0.5  # the downgrade did not wait for the writer
            assert access.mode == "shared"
            time.sleep(0.5)
            assert not got.exists()  # still shut out: the engine is still in (shared) use
        assert writer.wait(timeout=30) == 0
        assert got.exists()
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
