"""A small view of the Linux process table (``/proc``): enough to find and kill an engine's
processes."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import poll_until

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    state: str
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name if self.argv else ""


def read(pid: int) -> Process | None:
    """The process ``pid``, or None when it does not exist."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw_argv = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name in stat is parenthesised and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    argv = tuple(part.decode(errors="replace") for part in raw_argv.split(b"\0") if part)
    return Process(pid=pid, ppid=int(fields[1]), state=fields[0], argv=argv)


def all_processes() -> list[Process]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            process = read(int(entry.name))
            if process is not None:
                found.append(process)
    return found


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie counts as dead (it only waits to be reaped)."""
    process = read(pid)
    return process is not None and process.state not in ("Z", "X")


def descendants(roots: set[int], table: list[Process] | None = None) -> set[int]:
    """Every process below ``roots`` in the parent tree (roots excluded)."""
    table = table if table is not None else all_processes()
    children: dict[int, list[int]] = {}
    for process in table:
        children.setdefault(process.ppid, []).append(process.pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def kill_all(pids: set[int], sig: signal.Signals = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        # Reap our own children at once so they do not linger as zombies.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: set[int], *, timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the deadline."""
    alive = set(pids)

    def still_alive() -> set[int]:
        nonlocal alive
        for pid in alive:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our own children: reap them, or they stay zombies
        alive = {pid for pid in alive if is_alive(pid)}
        return alive

    with contextlib.suppress(ReadinessTimeout):
        poll_until(
            still_alive,
            lambda left: not left,
            timeout=timeout,
            what=f"processes {sorted(pids)} to end",
            schedule=(0.05, 1.0, 0.05),
        )
    return alive


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
