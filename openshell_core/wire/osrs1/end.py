"""OSRS1: one end of a stream over asyncio (a local pump that outlives attachments).

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable

from openshell_core.wire.osrs1.errors import (
    PeerError,
    StreamError,
)
from openshell_core.wire.osrs1.frames import (
    DEFAULT_LIVENESS,
    MAX_DATA,
    PING_FRAME,
    Liveness,
    error_frame,
)
from openshell_core.wire.osrs1.stream import StreamState


class Detach(enum.Enum):
    """How an attachment ended."""

    COMPLETE = "the stream is complete"
    CLOSED = "the tunnel was closed"
    SILENT = "no sign of life"
    BROKEN = "an I/O error on the tunnel"
    DROPPED = "a newer attachment took over"


class StreamEnd:
    """One end of a stream over asyncio: the local pipes, and the transports it is attached to.

    The local pump reads the local source only as far as the buffer has room, so a peer that is
    slow (or away) slows the local side down instead of growing memory. ``done`` says when the
    stream is complete for this end (then :meth:`attach` returns :attr:`Detach.COMPLETE`).
    """

    def __init__(
        self,
        state: StreamState,
        local_reader: asyncio.StreamReader,
        local_writer: asyncio.StreamWriter,
        *,
        done: Callable[[StreamState], bool],
        liveness: Liveness = DEFAULT_LIVENESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.liveness = liveness
        self.last_heard = clock()
        self._local_reader = local_reader
        self._local_writer = local_writer
        self._done = done
        self._clock = clock
        self._wake = asyncio.Event()  # something to send, or the stream may be complete
        self._room = asyncio.Event()  # acknowledgements made room in the buffer
        self._kick: asyncio.Event | None = None
        self._detached = asyncio.Event()
        self._detached.set()
        self._pump: asyncio.Task[None] | None = None

    @property
    def attached(self) -> bool:
        return not self._detached.is_set()

    def alive(self) -> bool:
        """Attached, and heard from within the liveness bound."""
        return self.attached and self._clock() - self.last_heard < self.liveness.dead_after

    def start(self) -> None:
        """Start reading the local source (once)."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._pump_local())

    async def close(self) -> None:
        """Stop the local pump and close the local sink."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        await _close(self._local_writer)

    async def drop(self) -> None:
        """End the current attachment (a newer one takes over) and wait until it is gone."""
        if self._kick is not None:
            self._kick.set()
        await self._detached.wait()

    async def fail(self, writer: asyncio.StreamWriter | None, reason: str) -> None:
        """Tell the peer (when attached through ``writer``) that the stream ends, and why."""
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                writer.write(error_frame(reason))
                await asyncio.wait_for(writer.drain(), 2)

    async def attach(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_received: int
    ) -> Detach:
        """Run the stream over one transport until it ends; the transport is closed then.

        :raises OffsetOutOfRange: ``peer_received`` is outside the buffer (nothing was sent).
        :raises StreamError: the peer broke the protocol or ended the stream with an error.
        """
        if self.attached:
            raise RuntimeError("attach while attached; drop() the old attachment first")
        self.state.attach(peer_received)
        self.start()
        self._kick = kick = asyncio.Event()
        self._detached.clear()
        self.last_heard = self._clock()
        self._wake.set()
        receiving = asyncio.ensure_future(self._receive(reader, writer))
        sending = asyncio.ensure_future(self._send(writer))
        pinging = asyncio.ensure_future(self._ping(writer))
        kicked = asyncio.ensure_future(kick.wait())
        outcome = Detach.BROKEN
        try:
            done, _ = await asyncio.wait(
                {receiving, sending, pinging, kicked}, return_when=asyncio.FIRST_COMPLETED
            )
            if kicked in done:
                outcome = Detach.DROPPED
            elif receiving in done:
                outcome = receiving.result()  # a StreamError is raised here
            elif sending in done and sending.exception() is None:
                outcome = Detach.COMPLETE
        except PeerError:
            raise  # the peer knows why
        except StreamError as exc:
            await self.fail(writer, str(exc.message))
            raise
        finally:
            for task in (receiving, sending, pinging, kicked):
                task.cancel()
            await asyncio.gather(receiving, sending, pinging, kicked, return_exceptions=True)
            if outcome is Detach.COMPLETE:
                await _close(writer)
            else:
                _abort(writer)
            self.state.detach()
            self._kick = None
            self._detached.set()
        return outcome

    async def _pump_local(self) -> None:
        try:
            while True:
                room = self.state.out.room
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                data = await self._local_reader.read(min(room, MAX_DATA))
                if not data:
                    break
                self.state.write(data)
                self._wake.set()
        except OSError:
            pass
        self.state.finish()
        self._wake.set()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        """Write what the peer has not been sent; return when the stream is complete."""
        while True:
            frames = self.state.outgoing()
            if frames:
                writer.write(frames)
                await writer.drain()
                continue
            if self._done(self.state):
                return
            self._wake.clear()
            if not self.state.has_outgoing() and not self._done(self.state):
                await self._wake.wait()

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        """Every ``ping_every`` seconds an ACK (when there is news) or a PING."""
        while True:
            await asyncio.sleep(self.liveness.ping_every)
            writer.write(self.state.ack_frame() or PING_FRAME)

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Detach:
        while True:
            try:
                # Silence counts only while waiting for the transport, not while the local sink
                # is slow to take what arrived.
                data = await asyncio.wait_for(reader.read(65536), self.liveness.dead_after)
            except TimeoutError:
                return Detach.SILENT
            except OSError:
                return Detach.BROKEN
            if not data:
                return Detach.CLOSED
            self.last_heard = self._clock()
            incoming = self.state.feed(data)
            if incoming.acked:
                self._room.set()
                self._wake.set()
            if incoming.data:
                await self._deliver(incoming.data)
            if incoming.finished:
                await _end_output(self._local_writer)
            if self.state.ack_due() and (ack := self.state.ack_frame()) is not None:
                try:
                    writer.write(ack)
                    await writer.drain()
                except OSError:
                    return Detach.BROKEN
            if self._done(self.state):
                return Detach.COMPLETE

    async def _deliver(self, data: bytes) -> None:
        sink = self._local_writer
        if sink.is_closing():
            return  # the local side is gone; its pump ends the stream
        with contextlib.suppress(OSError, RuntimeError):
            sink.write(data)
            await sink.drain()


async def _end_output(writer: asyncio.StreamWriter) -> None:
    """Pass the peer's end on to the local sink (EOF where it can take one, else a close)."""
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
            return
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop a transport at once: a dead peer must not hold a close up."""
    transport = writer.transport
    if hasattr(transport, "abort"):
        transport.abort()
    else:
        transport.close()
