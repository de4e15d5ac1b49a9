"""What every mode of the supervisor shares: who is calling, the children it started, a reply.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

#: Seconds a caller has to send its preface, and each request line after it.
PREFACE_TIMEOUT: Final = 10.0
#: Seconds a child gets between SIGTERM (or SIGHUP) and SIGKILL.
STOP_GRACE: Final = 2.0


@dataclass(frozen=True)
class Caller:
    """Who a connection is: the session token of its NSSH1 preface, and its address (for logs)."""

    token: str = field(repr=False)
    where: str


#: Serves one connection after the preface: the probe bytes already read, the streams, the caller.
Mode = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter, Caller], Awaitable[None]]


@dataclass
class Children:
    """Processes the supervisor started, so that a stop can end them all."""

    running: set[asyncio.subprocess.Process] = field(default_factory=set)

    async def stop_all(self) -> None:
        for process in list(self.running):
            signal_group(process, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in self.running), return_exceptions=True),
                STOP_GRACE,
            )
        for process in list(self.running):
            signal_group(process, signal.SIGKILL)


def signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Signal the child's whole session (each child leads its own)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


async def send_line(writer: asyncio.StreamWriter, line: bytes) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(line)
        await writer.drain()
