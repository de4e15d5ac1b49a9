"""HeldSession's readers against its close: closing a session never raises in a reader thread
(pytest would report that against another test) and never waits on a pipe a grandchild keeps.

Plain local processes stand in for ssh: ``sh`` as the session, a background child of it as the
ProxyCommand that may outlive it and keep writing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from pytest_openshell.fixtures import HeldSession, SessionEnded

CLOSE_WITHIN = 5.0


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Exceptions that escaped a thread while the test ran."""
    caught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))
    return caught


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Starts shells in their own process group; the whole group is killed after the test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def held(spawn: list[subprocess.Popen[bytes]], script: str) -> HeldSession:
    process = subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    spawn.append(process)
    return HeldSession(process)


def close_within(session: HeldSession, seconds: float) -> float:
    """Close ``session`` in a thread; the seconds it took (fails when it takes longer)."""
    started = time.monotonic()
    closer = threading.Thread(target=session.close, daemon=True)
    closer.start()
    closer.join(seconds)
    assert not closer.is_alive(), f"close() still running {seconds:g} s later"
    return time.monotonic() - started


def threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still running a moment after close()."""
    new = [thread for thread in threading.enumerate() if thread not in before]
    for thread in new:
        thread.join(1.0)
    return [thread for thread in new if thread.is_alive()]


def test_closing_while_the_readers_are_reading_raises_nothing_in_their_threads(
    spawn: list[subprocess.Popen[bytes]], thread_errors: list[BaseException | None]
) -> None:
    # A grandchild floods both pipes, so a read is always in progress or about to start.
    before = set(threading.enumerate())
    session = held(spawn, "(yes >&2) & (yes) & exec cat")
    session.wait_for(lambda output: len(output) > 0, timeout=10)
    close_within(session, CLOSE_WITHIN)
    left = threads_left(before)
    assert thread_errors == []
    assert left == [], f"reader threads still running after close(): {left}"


def test_closing_while_the_readers_are_blocked_on_a_pipe_a_grandchild_holds_returns_at_once(
    spawn: list[subprocess.Popen[bytes]], thread_errors: list[BaseException | None]
) -> None:
    # The session ends as soon as its stdin closes; the grandchild keeps both pipes open, silent.
    before = set(threading.enumerate())
    session = held(spawn, "echo ready; (sleep 120) & exec cat")
    session.wait_for(lambda output: b"ready" in output, timeout=10)
    close_within(session, CLOSE_WITHIN)
    left = threads_left(before)
    assert thread_errors == []
    assert left == [], f"reader threads still running after close(): {left}"


def test_output_a_session_wrote_before_it_ended_is_all_collected(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    session = held(
        spawn, "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; echo err >&2"
    )
    assert session.wait_end(timeout=30) == 0
    assert session.output.count(b"\n") == 2000
    assert session.errors.strip() == "err"
    session.close()


def test_a_session_that_ended_fails_a_wait_at_once_with_its_stderr(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    session = held(spawn, "echo 'Connection closed by remote host' >&2; exit 255")
    started = time.monotonic()
    with pytest.raises(SessionEnded, match=r"ended \(exit code 255\).*Connection closed"):
        session.wait_for(lambda output: b"never" in output, timeout=60)
    assert time.monotonic() - started < 10
    session.close()


def test_a_wait_that_reaches_its_deadline_while_the_session_runs_is_not_an_end(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    session = held(spawn, "echo tick; exec cat")
    with pytest.raises(AssertionError, match=r"not within 0.3 s; last seen: b'tick\\n'") as caught:
        session.wait_for(lambda output: b"never" in output, timeout=0.3)
    assert not isinstance(caught.value, SessionEnded)
    session.close()
