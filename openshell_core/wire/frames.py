"""The one frame header of the sandbox port's framed modes: type (1 byte), length (4 bytes, big
endian), payload. EXEC1 answers and OSRS1 streams both use it; each names its own types and bounds.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct(">BI")
#: Bytes of a header.
HEADER_SIZE: Final = HEADER.size


def pack_frame(kind: int, payload: bytes) -> bytes:
    """One frame of type ``kind`` carrying ``payload``."""
    return HEADER.pack(kind, len(payload)) + payload


def unpack_header(data: bytes | bytearray) -> tuple[int, int]:
    """(type, payload length) from the first :data:`HEADER_SIZE` bytes of ``data``."""
    kind, length = HEADER.unpack_from(data)
    return int(kind), int(length)
