"""SSH mode: an SSH client's banner arrived; a fresh ``sshd -i`` serves it through pipes.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence

from openshell_core.sandbox.mode import STOP_GRACE, Caller, Children, signal_group
from openshell_core.wire.relay import relay

log = logging.getLogger("openshell.sandbox")


class SshMode:
    """Starts ``argv`` (``sshd -i``, or a stand-in in tests) per connection, with ``env``."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], children: Children) -> None:
        self.argv = list(argv)
        self.env = env
        self.children = children

    async def start_sshd(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=dict(self.env),
            start_new_session=True,
        )
        self.children.running.add(process)
        return process

    async def end_sshd(self, process: asyncio.subprocess.Process) -> None:
        signal_group(process, signal.SIGHUP)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE)
        signal_group(process, signal.SIGKILL)
        self.children.running.discard(process)

    async def serve(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        process = await self.start_sshd()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(probe)  # the banner's first bytes, already read
            await relay(reader, writer, process.stdout, process.stdin)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE)
        finally:
            await self.end_sshd(process)
