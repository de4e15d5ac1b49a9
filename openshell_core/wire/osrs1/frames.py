"""OSRS1 frames: kinds and bounds on the shared header (:mod:`openshell_core.wire.frames`).

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from openshell_core.wire.frames import HEADER_SIZE, pack_frame, unpack_header
from openshell_core.wire.osrs1.errors import StreamProtocolError

#: Largest data payload of one frame.
MAX_DATA: Final = 64 * 1024


#: Largest ERROR frame text.
MAX_ERROR: Final = 1024


_OFFSET = struct.Struct(">Q")


class FrameType(enum.IntEnum):
    DATA = 1  # offset (8 bytes) + bytes
    ACK = 2  # offset (8 bytes): everything before it was received
    PING = 3  # empty: the attachment is alive
    FIN = 4  # offset (8 bytes): the sender's data ends here
    ERROR = 5  # UTF-8 text: the sender ends the stream


@dataclass(frozen=True)
class Liveness:
    """How often an end pings, and after how much silence it gives an attachment up."""

    ping_every: float = 1.0
    dead_after: float = 5.0


DEFAULT_LIVENESS: Final = Liveness()


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    return pack_frame(int(kind), payload)


def data_frame(offset: int, data: bytes) -> bytes:
    return encode_frame(FrameType.DATA, _OFFSET.pack(offset) + data)


def offset_frame(kind: FrameType, offset: int) -> bytes:
    return encode_frame(kind, _OFFSET.pack(offset))


def error_frame(text: str) -> bytes:
    return encode_frame(FrameType.ERROR, text.encode()[:MAX_ERROR])


PING_FRAME: Final = encode_frame(FrameType.PING)


_MAX_PAYLOAD: Final = {
    FrameType.DATA: _OFFSET.size + MAX_DATA,
    FrameType.ACK: _OFFSET.size,
    FrameType.PING: 0,
    FrameType.FIN: _OFFSET.size,
    FrameType.ERROR: MAX_ERROR,
}


@dataclass(frozen=True)
class Frame:
    kind: FrameType
    payload: bytes = b""

    @property
    def offset(self) -> int:
        return int(_OFFSET.unpack_from(self.payload)[0])

    @property
    def data(self) -> bytes:
        return self.payload[_OFFSET.size :]


class FrameDecoder:
    """Frames out of a byte stream fed in arbitrary pieces; a partial frame waits for the rest."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """:raises StreamProtocolError: an unknown type, or a payload of the wrong size."""
        self._pending += data
        frames = []
        while len(self._pending) >= HEADER_SIZE:
            kind, length = unpack_header(self._pending)
            if kind not in FrameType._value2member_map_:
                raise StreamProtocolError(f"unknown OSRS1 frame type {kind}")
            frame_type = FrameType(kind)
            exact = frame_type in (FrameType.ACK, FrameType.FIN, FrameType.PING)
            limit = _MAX_PAYLOAD[frame_type]
            if length > limit or (exact and length != limit) or (
                frame_type is FrameType.DATA and length < _OFFSET.size
            ):  # fmt: skip
                raise StreamProtocolError(f"OSRS1 {frame_type.name} frame of {length} bytes")
            end = HEADER_SIZE + length
            if len(self._pending) < end:
                break
            frames.append(Frame(frame_type, bytes(self._pending[HEADER_SIZE:end])))
            del self._pending[:end]
        return frames
