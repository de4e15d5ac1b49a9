"""OSRS1: the sans-I/O state of one end of a stream (what to send, what was received).

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from openshell_core.wire.osrs1.buffer import BUFFER_LIMIT, SendBuffer
from openshell_core.wire.osrs1.errors import (
    OffsetOutOfRange,
    PeerError,
    StreamProtocolError,
)
from openshell_core.wire.osrs1.frames import (
    MAX_DATA,
    FrameDecoder,
    FrameType,
    data_frame,
    offset_frame,
)

#: Acknowledge at least every this many received bytes (and at every ping).
ACK_EVERY: Final = 256 * 1024


# -- frames ------------------------------------------------------------------------------------


# -- the sending side's buffer -----------------------------------------------------------------


# -- one end's state (sans I/O) ----------------------------------------------------------------


@dataclass
class Incoming:
    """What one piece of input meant: bytes to hand on, whether the peer's data ended."""

    data: bytes = b""
    finished: bool = False
    acked: bool = False


class StreamState:
    """One end of a stream: its outgoing buffer, what it received, and the current attachment.

    No I/O: :meth:`feed` takes bytes read from the transport, :meth:`outgoing` gives bytes to
    write to it. Between :meth:`detach` and the next :meth:`attach` nothing is sent, and input is
    not expected; a partial frame from the old transport is forgotten.
    """

    def __init__(self, limit: int = BUFFER_LIMIT, *, ack_every: int | None = None) -> None:
        self.out = SendBuffer(limit)
        #: Positions of the peer's stream received (its FIN counts as one).
        self.received = 0
        self.peer_finished = False
        self.ack_every = ack_every or max(1, min(limit // 4, ACK_EVERY))
        self._acked_sent = 0
        self._cursor: int | None = None
        self._decoder = FrameDecoder()

    @property
    def attached(self) -> bool:
        return self._cursor is not None

    def write(self, data: bytes) -> None:
        """Queue local bytes for the peer. :raises StreamOverflow:"""
        self.out.push(data)

    def finish(self) -> None:
        """The local side ended: a FIN follows the data."""
        self.out.finish()

    @property
    def peer_fin_acked(self) -> bool:
        """The peer's FIN arrived and our ACK of it is written: nothing is left to receive."""
        return self.peer_finished and self._acked_sent == self.received

    def check_resume(self, peer_received: int) -> None:
        """:raises OffsetOutOfRange: the peer claims less than it acknowledged, or more than
        was ever sent."""
        if not self.out.acked <= peer_received <= self.out.total:
            raise OffsetOutOfRange(
                f"the peer resumes at offset {peer_received}, outside the buffer "
                f"[{self.out.acked}, {self.out.total}]"
            )

    def attach(self, peer_received: int) -> None:
        """A new transport, whose peer has everything before ``peer_received``.

        :raises OffsetOutOfRange: see :meth:`check_resume`.
        """
        self.check_resume(peer_received)
        self.out.ack(peer_received)
        self._cursor = peer_received
        self._decoder = FrameDecoder()
        self._acked_sent = self.received  # the resume exchange told the peer

    def detach(self) -> None:
        self._cursor = None
        self._decoder = FrameDecoder()

    def has_outgoing(self) -> bool:
        return self._cursor is not None and self._cursor < self.out.total

    def outgoing(self, budget: int = 4 * MAX_DATA) -> bytes:
        """Frames for what the attached peer has not been sent yet (about ``budget`` bytes)."""
        if self._cursor is None:
            return b""
        frames = bytearray()
        cursor, end = self._cursor, self.out.end
        while cursor < end and len(frames) < budget:
            data = self.out.read(cursor, min(MAX_DATA, end - cursor))
            frames += data_frame(cursor, data)
            cursor += len(data)
        if self.out.finished and cursor == end:
            frames += offset_frame(FrameType.FIN, end)
            cursor += 1
        self._cursor = cursor
        return bytes(frames)

    def ack_due(self) -> bool:
        """Whether an ACK should go now: enough unacknowledged input, or the peer's FIN."""
        unacked = self.received - self._acked_sent
        return unacked >= self.ack_every or (self.peer_finished and unacked > 0)

    def ack_frame(self) -> bytes | None:
        """An ACK of everything received, or None when the peer knows it already."""
        if self.received == self._acked_sent:
            return None
        self._acked_sent = self.received
        return offset_frame(FrameType.ACK, self.received)

    def feed(self, data: bytes) -> Incoming:
        """Apply bytes read from the transport.

        Data the peer sends again (from before :attr:`received`) is dropped, so a resend never
        duplicates; data from beyond it (a gap) is a protocol error, never spliced in.

        :raises StreamProtocolError, PeerError:
        """
        incoming = Incoming()
        delivered = bytearray()
        for frame in self._decoder.feed(data):
            if frame.kind is FrameType.DATA:
                delivered += self._accept_data(frame.offset, frame.data)
            elif frame.kind is FrameType.ACK:
                self.out.ack(frame.offset)
                incoming.acked = True
            elif frame.kind is FrameType.FIN:
                incoming.finished |= self._accept_fin(frame.offset)
            elif frame.kind is FrameType.ERROR:
                raise PeerError(frame.payload.decode(errors="replace") or "the peer ended it")
        incoming.data = bytes(delivered)
        return incoming

    def _accept_data(self, offset: int, data: bytes) -> bytes:
        if self.peer_finished and data:
            raise StreamProtocolError(f"data at offset {offset} after the peer's FIN")
        if offset > self.received:
            raise StreamProtocolError(
                f"data at offset {offset} while {self.received} was expected (a gap)"
            )
        fresh = data[self.received - offset :]
        self.received += len(fresh)
        return fresh

    def _accept_fin(self, offset: int) -> bool:
        if self.peer_finished:
            if offset + 1 != self.received:
                raise StreamProtocolError(f"a second FIN at offset {offset}")
            return False  # the same FIN sent again
        if offset != self.received:
            raise StreamProtocolError(f"FIN at offset {offset} while {self.received} was received")
        self.peer_finished = True
        self.received += 1
        return True


# -- control lines -----------------------------------------------------------------------------


# -- the asyncio driver ------------------------------------------------------------------------
