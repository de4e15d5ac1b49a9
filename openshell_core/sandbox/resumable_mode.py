"""OSRS1 mode: open or resume a resumable stream; its ``sshd -i`` outlives the connection that
started it, so a live SSH session survives a gateway restart (:mod:`openshell_core.wire.osrs1`).

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from openshell_core.sandbox.mode import PREFACE_TIMEOUT, Caller, send_line
from openshell_core.sandbox.ssh_mode import SshMode
from openshell_core.wire.osrs1.buffer import BUFFER_LIMIT
from openshell_core.wire.osrs1.end import Detach, StreamEnd
from openshell_core.wire.osrs1.errors import OffsetOutOfRange, StreamError, StreamProtocolError
from openshell_core.wire.osrs1.frames import DEFAULT_LIVENESS, Liveness
from openshell_core.wire.osrs1.lines import (
    OpenRequest,
    Refusal,
    Refused,
    Resumed,
    ResumeRequest,
    Ticket,
    judge_resume,
    new_stream,
    parse_request,
    read_line,
)
from openshell_core.wire.osrs1.stream import StreamState

log = logging.getLogger("openshell.sandbox")

#: Resumable streams held at once (attached or detached); more are refused.
MAX_STREAMS: Final = 64
#: Seconds a detached stream is kept beyond the resume timeout its opener asked for: the
#: two ends notice a break at different times (up to the liveness bound apart).
DETACHED_GRACE: Final = 10.0


@dataclass(eq=False)
class HeldStream:
    """A resumable stream: its sshd, its end of the stream, and the tunnel it is attached to."""

    ticket: Ticket
    end: StreamEnd
    process: asyncio.subprocess.Process
    #: Seconds it is kept while detached.
    keep_for: float
    writer: asyncio.StreamWriter | None = None
    expiry: asyncio.TimerHandle | None = None


class ResumableMode:
    """Holds the resumable streams; ``liveness``, ``buffer_limit``, ``max_streams`` and
    ``detached_grace`` are their bounds."""

    def __init__(
        self,
        ssh: SshMode,
        *,
        liveness: Liveness = DEFAULT_LIVENESS,
        buffer_limit: int = BUFFER_LIMIT,
        max_streams: int = MAX_STREAMS,
        detached_grace: float = DETACHED_GRACE,
    ) -> None:
        self.ssh = ssh
        self.liveness = liveness
        self.buffer_limit = buffer_limit
        self.max_streams = max_streams
        self.detached_grace = detached_grace
        self.streams: dict[str, HeldStream] = {}
        self._endings: set[asyncio.Task[None]] = set()

    async def tell_stopping(self) -> None:
        """Tell every attached stream's peer (an ERROR frame), so its ssh-proxy ends the session
        at once instead of trying to resume a stream that is about to be gone."""
        await asyncio.gather(
            *(
                held.end.fail(held.writer, "the sandbox is stopping")
                for held in self.streams.values()
            )
        )

    async def close(self) -> None:
        """End every stream and its sshd."""
        for held in list(self.streams.values()):
            await self._finish(held)
        for task in list(self._endings):
            task.cancel()
        await asyncio.gather(*self._endings, return_exceptions=True)

    async def serve(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        line = probe + await read_line(reader, PREFACE_TIMEOUT)
        try:
            request = parse_request(line)
        except StreamProtocolError as exc:
            log.warning("OSRS1 request from %s refused: %s", caller.where, exc.message)
            await send_line(writer, Refused(Refusal.MALFORMED, exc.message).encode())
            return
        if isinstance(request, OpenRequest):
            await self._open_stream(request, reader, writer, caller)
        else:
            await self._resume_stream(request, reader, writer, caller)

    async def _open_stream(
        self,
        request: OpenRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        if len(self.streams) >= self.max_streams:
            log.warning(
                "OSRS1 open from %s refused: %d streams held", caller.where, self.max_streams
            )
            await send_line(writer, Refused(Refusal.LIMIT, "too many resumable streams").encode())
            return
        process = await self.ssh.start_sshd()
        assert process.stdin is not None and process.stdout is not None
        opened = new_stream()
        end = StreamEnd(
            StreamState(self.buffer_limit),
            process.stdout,
            process.stdin,
            # Complete once everything sshd wrote, its end included, was acknowledged; or once
            # the peer's input ended (ssh went away) and sshd has finished too: nobody will read
            # the rest.
            done=lambda state: state.out.fin_acked or (state.peer_finished and state.out.finished),
            liveness=self.liveness,
        )
        held = HeldStream(
            Ticket(opened.stream_id, caller.token, opened.secret),
            end,
            process,
            keep_for=request.resume_timeout + self.detached_grace,
        )
        self.streams[opened.stream_id] = held
        end.start()
        log.info(
            "resumable stream %s opened from %s (kept %g s when detached)",
            opened.stream_id,
            caller.where,
            held.keep_for,
        )
        await self._run_attachment(held, reader, writer, 0, opened.encode())

    async def _resume_stream(
        self,
        request: ResumeRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        held = self.streams.get(request.stream_id)
        alive = held is not None and held.end.alive()
        verdict = judge_resume(held.ticket if held else None, caller.token, request, alive=alive)
        if verdict is None and held is not None:
            self._cancel_expiry(held)
            if held.end.attached:
                log.info(
                    "resumable stream %s: its tunnel went silent; dropping it for the new one",
                    request.stream_id,
                )
                await held.end.drop()
            if held.end.attached:  # another resume got in while the old tunnel was dropped
                verdict = Refused(Refusal.BUSY, "the stream is attached to a live tunnel")
            else:
                try:
                    held.end.state.check_resume(request.offset)
                except OffsetOutOfRange as exc:
                    verdict = Refused(Refusal.OFFSET, exc.message)
        if verdict is not None:
            log.warning(
                "resumable stream %s: resume from %s refused (%s: %s)",
                request.stream_id,
                caller.where,
                verdict.code.value,
                verdict.message,
            )
            await send_line(writer, verdict.encode())
            if verdict.code is Refusal.OFFSET and held is not None:
                await self._finish(held)  # its peer fell out of the buffer: it cannot go on
            return
        assert held is not None
        log.info("resumable stream %s resumed from %s", request.stream_id, caller.where)
        reply = Resumed(held.end.state.received).encode()
        await self._run_attachment(held, reader, writer, request.offset, reply)

    async def _run_attachment(
        self,
        held: HeldStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_received: int,
        reply: bytes,
    ) -> None:
        """Send the reply, run the stream over this connection, then keep or end the stream.

        Nothing is awaited between the caller's checks and the attach, so no other resume can
        come in between.
        """
        stream_id = held.ticket.stream_id
        held.writer = writer
        outcome = Detach.BROKEN
        try:
            writer.write(reply)  # flushed with the first frames
            outcome = await held.end.attach(reader, writer, peer_received)
        except StreamError as exc:
            log.warning("resumable stream %s ended: %s", stream_id, exc.message)
            await self._finish(held)
            return
        except OSError:
            pass
        finally:
            if held.writer is writer:
                held.writer = None
        if outcome is Detach.COMPLETE:
            log.info("resumable stream %s complete", stream_id)
            await self._finish(held)
        elif outcome is not Detach.DROPPED and held.end.state.peer_finished:
            # The peer's input ended (ssh went away) and it never resumes after that.
            log.info("resumable stream %s complete (its peer had finished)", stream_id)
            await self._finish(held)
        elif outcome is not Detach.DROPPED and self.streams.get(stream_id) is held:
            log.info(
                "resumable stream %s detached (%s); kept for %g s",
                stream_id,
                outcome.value,
                held.keep_for,
            )
            held.expiry = asyncio.get_running_loop().call_later(held.keep_for, self._expire, held)

    def _cancel_expiry(self, held: HeldStream) -> None:
        if held.expiry is not None:
            held.expiry.cancel()
            held.expiry = None

    def _expire(self, held: HeldStream) -> None:
        log.info(
            "resumable stream %s expired after %g s detached; ending its sshd",
            held.ticket.stream_id,
            held.keep_for,
        )
        task = asyncio.ensure_future(self._finish(held))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def _finish(self, held: HeldStream) -> None:
        """Forget the stream and end its sshd."""
        if self.streams.get(held.ticket.stream_id) is held:
            del self.streams[held.ticket.stream_id]
        self._cancel_expiry(held)
        await held.end.close()
        await self.ssh.end_sshd(held.process)
