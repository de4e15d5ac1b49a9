"""EXEC1 mode: run one command and answer its output and exit code in frames.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping

from openshell_core.sandbox.mode import Caller, Children, signal_group
from openshell_core.wire.exec1 import (
    MAX_EXEC_REQUEST,
    MAX_FRAME,
    ExecRequest,
    FrameType,
    encode_frame,
    exit_frame,
)

log = logging.getLogger("openshell.sandbox")


class ExecMode:
    """Runs EXEC1 requests with ``env`` (secret-free) under ``workdir`` unless one is asked."""

    def __init__(self, env: Mapping[str, str], workdir: str, children: Children) -> None:
        self.env = env
        self.workdir = workdir
        self.children = children

    async def serve(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        line = await read_request_line(probe, reader)
        try:
            request = ExecRequest.decode(line)
        except ValueError as exc:
            log.warning("EXEC1 refused: %s", exc)
            writer.write(encode_frame(FrameType.STDERR, f"{exc}\n".encode()) + exit_frame(2))
            await writer.drain()
            return
        env = {**self.env, **request.env}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        try:
            process = await asyncio.create_subprocess_exec(
                *request.argv,
                stdin=asyncio.subprocess.PIPE
                if request.stdin is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=request.workdir or self.workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            message = f"cannot run {request.argv[0]!r}: {exc.strerror or exc}\n"
            writer.write(encode_frame(FrameType.STDERR, message.encode()) + exit_frame(code))
            await writer.drain()
            return
        self.children.running.add(process)
        try:
            await self._run(process, request, reader, writer)
        finally:
            signal_group(process, signal.SIGKILL)
            self.children.running.discard(process)

    async def _run(
        self,
        process: asyncio.subprocess.Process,
        request: ExecRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        stdout, stderr = process.stdout, process.stderr
        assert stdout is not None and stderr is not None
        lock = asyncio.Lock()

        async def forward(source: asyncio.StreamReader, kind: FrameType) -> None:
            while data := await source.read(MAX_FRAME):
                async with lock:
                    writer.write(encode_frame(kind, data))
                    await writer.drain()

        async def feed() -> None:
            if process.stdin is None:
                return
            with contextlib.suppress(OSError):
                process.stdin.write(request.stdin or b"")
                await process.stdin.drain()
            process.stdin.close()

        async def hang_up() -> None:
            # Nothing follows the request; end of stream means the caller gave up.
            with contextlib.suppress(OSError):
                while await reader.read(4096):
                    pass

        async def complete() -> int:
            # The command is done when it has exited and its output pipes are closed (as with
            # `docker exec`): a background process that keeps them open keeps the exec open.
            await asyncio.gather(
                forward(stdout, FrameType.STDOUT),
                forward(stderr, FrameType.STDERR),
                feed(),
            )
            return await process.wait()

        work = asyncio.ensure_future(complete())
        watcher = asyncio.ensure_future(hang_up())
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if work not in done:
            log.info("EXEC1 caller went away; killing %s", request.argv[0])
            signal_group(process, signal.SIGKILL)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return
        code = work.result()  # a failed write re-raises here: the caller is gone
        writer.write(exit_frame(code if code >= 0 else 128 - code))
        await writer.drain()


async def read_request_line(probe: bytes, reader: asyncio.StreamReader) -> bytes:
    """The rest of the request line after the probe bytes (capped; nothing follows it)."""
    data = bytearray(probe)
    while not data.endswith(b"\n") and len(data) <= MAX_EXEC_REQUEST:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
        end = data.find(b"\n")
        if end >= 0:
            del data[end + 1 :]
    return bytes(data)
