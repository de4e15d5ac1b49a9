"""OSRS1: the sending side's buffer (what one end sent and the peer has not acknowledged).

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

from typing import Final

from openshell_core.wire.osrs1.errors import (
    OffsetOutOfRange,
    StreamError,
    StreamOverflow,
    StreamProtocolError,
)

#: Bytes each end keeps for the peer at most (sent, not yet acknowledged).
BUFFER_LIMIT: Final = 4 * 1024 * 1024


class SendBuffer:
    """What one end sent or will send, from the first unacknowledged byte on.

    Offsets count the stream's bytes from 0; a finished stream has one more position, its FIN,
    so that acknowledging ``end + 1`` says the end itself arrived (as TCP counts its FIN).
    """

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self.limit = limit
        #: The peer has everything before this position.
        self.acked = 0
        self.finished = False
        self._start = 0  # offset of _data[0]
        self._data = bytearray()

    @property
    def base(self) -> int:
        """Offset of the first byte still held."""
        return self._start

    @property
    def end(self) -> int:
        """Offset after the last data byte written."""
        return self._start + len(self._data)

    @property
    def total(self) -> int:
        """Positions in the stream so far: its data, and its FIN once finished."""
        return self.end + (1 if self.finished else 0)

    @property
    def held(self) -> int:
        return len(self._data)

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self._data))

    @property
    def fin_acked(self) -> bool:
        return self.finished and self.acked == self.total

    def push(self, data: bytes) -> None:
        """:raises StreamOverflow: the bytes do not fit (nothing is kept then)."""
        if self.finished:
            raise StreamError("write after the end of the stream")
        if len(self._data) + len(data) > self.limit:
            raise StreamOverflow(
                f"the peer is more than {self.limit} bytes behind: ending the stream",
                hint="the connection is too slow or stuck",
            )
        self._data += data

    def finish(self) -> None:
        self.finished = True

    def ack(self, offset: int) -> None:
        """The peer has everything before ``offset``.

        :raises StreamProtocolError: an acknowledgement going back, or of bytes never sent.
        """
        if not self.acked <= offset <= self.total:
            raise StreamProtocolError(
                f"acknowledgement of offset {offset} outside [{self.acked}, {self.total}]"
            )
        drop = min(offset, self.end) - self._start
        if drop > 0:
            del self._data[:drop]
            self._start += drop
        self.acked = offset

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` held bytes from ``offset`` on."""
        if not self._start <= offset <= self.end:
            raise OffsetOutOfRange(
                f"offset {offset} outside the buffer [{self._start}, {self.end}]"
            )
        start = offset - self._start
        return bytes(self._data[start : start + size])
