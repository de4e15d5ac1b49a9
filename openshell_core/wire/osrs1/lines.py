"""OSRS1 control lines: open and resume requests, their replies, and the resume rules.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from openshell_core.wire.osrs1.errors import (
    StreamProtocolError,
)

MAGIC: Final = "OSRS1"
#: Default seconds a detached stream waits for its peer (``ssh-proxy --resume-timeout``).
RESUME_TIMEOUT: Final = 120.0
#: The supervisor never keeps a detached stream longer than this, whatever the peer asks.
MAX_RESUME_TIMEOUT: Final = 3600.0
#: Largest control line (request or reply), newline included.
MAX_LINE: Final = 1024


_HEX = re.compile(r"[0-9a-f]+")


_STREAM_ID = re.compile(r"[0-9a-f]{32}")


_SECRET = re.compile(r"[0-9a-f]{64}")


class Refusal(enum.StrEnum):
    """Why the supervisor refused an open or a resume (the code in ``OSRS1 ERR``)."""

    UNKNOWN = "unknown-stream"  # no such stream here (the sandbox restarted, or it expired)
    BUSY = "busy"  # the stream is attached to a live transport: try again later
    REFUSED = "refused"  # wrong token, wrong proof or a replayed request
    OFFSET = "bad-offset"  # the offset is outside what the supervisor holds
    LIMIT = "too-many-streams"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class OpenRequest:
    #: Seconds the opener will try to resume after a break (the supervisor keeps it as long).
    resume_timeout: float = RESUME_TIMEOUT

    def encode(self) -> bytes:
        return f"{MAGIC} OPEN {self.resume_timeout:g}\n".encode()


@dataclass(frozen=True)
class ResumeRequest:
    stream_id: str
    #: Greater than that of every resume accepted before (a replayed request is refused).
    generation: int
    #: Positions of the supervisor's stream the requester has received.
    offset: int
    proof: str = field(repr=False)

    def encode(self) -> bytes:
        return (
            f"{MAGIC} RESUME {self.stream_id} {self.generation} {self.offset} {self.proof}\n"
        ).encode()


@dataclass(frozen=True)
class Opened:
    stream_id: str
    secret: str = field(repr=False)

    def encode(self) -> bytes:
        return f"{MAGIC} OPENED {self.stream_id} {self.secret}\n".encode()


@dataclass(frozen=True)
class Resumed:
    #: Positions of the requester's stream the supervisor has received.
    offset: int

    def encode(self) -> bytes:
        return f"{MAGIC} RESUMED {self.offset}\n".encode()


@dataclass(frozen=True)
class Refused:
    code: Refusal
    message: str = ""

    def encode(self) -> bytes:
        text = "".join(ch if " " <= ch <= "~" else " " for ch in self.message)
        return f"{MAGIC} ERR {self.code.value} {text}".strip().encode()[: MAX_LINE - 1] + b"\n"


def _words(line: bytes) -> list[str]:
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise StreamProtocolError("OSRS1 line missing its newline or too long")
    try:
        words = line.decode("ascii").rstrip("\r\n").split(" ")
    except UnicodeDecodeError:
        raise StreamProtocolError("OSRS1 line is not ASCII") from None
    if words[0] != MAGIC or len(words) < 2:
        raise StreamProtocolError("not an OSRS1 line")
    return words


def _number(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise StreamProtocolError(f"not an offset: {text!r}")
    return int(text)


def parse_request(line: bytes) -> OpenRequest | ResumeRequest:
    """:raises StreamProtocolError: for anything but a well-formed OPEN or RESUME line."""
    words = _words(line)
    if words[1] == "OPEN" and len(words) == 3:
        try:
            timeout = float(words[2])
        except ValueError:
            raise StreamProtocolError(f"not a timeout: {words[2]!r}") from None
        if not math.isfinite(timeout):
            raise StreamProtocolError(f"not a timeout: {words[2]!r}")
        timeout = min(max(timeout, 0.0), MAX_RESUME_TIMEOUT)
        return OpenRequest(timeout)
    if words[1] == "RESUME" and len(words) == 6:
        stream_id, generation, offset, proof = words[2:]
        if not _STREAM_ID.fullmatch(stream_id) or not (len(proof) == 64 and _HEX.fullmatch(proof)):
            raise StreamProtocolError("malformed OSRS1 RESUME line")
        return ResumeRequest(stream_id, _number(generation), _number(offset), proof)
    raise StreamProtocolError(f"unknown OSRS1 request {words[1]!r}")


def parse_reply(line: bytes) -> Opened | Resumed | Refused:
    """:raises StreamProtocolError: for anything but OPENED, RESUMED or ERR."""
    words = _words(line)
    if words[1] == "OPENED" and len(words) == 4:
        if not _STREAM_ID.fullmatch(words[2]) or not _SECRET.fullmatch(words[3]):
            raise StreamProtocolError("malformed OSRS1 OPENED line")
        return Opened(words[2], words[3])
    if words[1] == "RESUMED" and len(words) == 3:
        return Resumed(_number(words[2]))
    if words[1] == "ERR" and len(words) >= 3:
        try:
            code = Refusal(words[2])
        except ValueError:
            code = Refusal.MALFORMED
        return Refused(code, " ".join(words[3:]))
    raise StreamProtocolError(f"unexpected OSRS1 reply {words[1]!r}")


def new_stream() -> Opened:
    """A fresh stream id and per-stream secret (from the OS's CSPRNG)."""
    return Opened(secrets.token_hex(16), secrets.token_hex(32))


def resume_proof(secret: str, stream_id: str, token: str, generation: int, offset: int) -> str:
    """Hex HMAC-SHA256, keyed with the stream's secret, of what a resume request claims.

    The secret itself never travels again after the opening reply, and a proof is good for one
    stream, one session token, one generation and one offset only.
    """
    message = f"{MAGIC} RESUME|{stream_id}|{token}|{generation}|{offset}".encode()
    return hmac.new(bytes.fromhex(secret), message, hashlib.sha256).hexdigest()


def resume_request(opened: Opened, token: str, generation: int, offset: int) -> ResumeRequest:
    proof = resume_proof(opened.secret, opened.stream_id, token, generation, offset)
    return ResumeRequest(opened.stream_id, generation, offset, proof)


@dataclass
class Ticket:
    """What the supervisor remembers to judge resumes of one stream."""

    stream_id: str
    token: str = field(repr=False)
    secret: str = field(repr=False)
    generation: int = 0


def judge_resume(
    ticket: Ticket | None, token: str, request: ResumeRequest, *, alive: bool
) -> Refused | None:
    """The supervisor's rules for a resume; None when it may go ahead.

    ``token`` is the one in the connection's NSSH1 preface (which the gateway signed); ``alive``
    says the stream is attached to a transport heard from within the liveness bound. A request
    that proves the secret uses up its generation even when refused as busy, so it cannot be
    replayed later. The offset is checked by :meth:`StreamState.attach` afterwards.
    """
    if ticket is None:
        return Refused(Refusal.UNKNOWN, "no such stream here (the sandbox restarted?)")
    if not hmac.compare_digest(ticket.token.encode(), token.encode()):
        return Refused(Refusal.REFUSED, "the stream was opened with another session token")
    expected = resume_proof(
        ticket.secret, ticket.stream_id, token, request.generation, request.offset
    )
    if not hmac.compare_digest(expected, request.proof):
        return Refused(Refusal.REFUSED, "wrong proof of the stream's secret")
    if request.generation <= ticket.generation:
        return Refused(Refusal.REFUSED, f"generation {request.generation} was used already")
    ticket.generation = request.generation
    if alive:
        return Refused(Refusal.BUSY, "the stream is attached to a live tunnel")
    return None


async def read_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """One control line (at most :data:`MAX_LINE` bytes); b"" at end of stream or on timeout.

    Byte by byte, so the frames that follow stay in ``reader``.
    """
    data = bytearray()

    async def collect() -> None:
        while len(data) < MAX_LINE:
            chunk = await reader.read(1)
            if not chunk:
                return
            data.extend(chunk)
            if chunk == b"\n":
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except (TimeoutError, OSError):
        return b""
    return bytes(data) if data.endswith(b"\n") else b""
