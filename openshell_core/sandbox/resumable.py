"""OSRS1: a byte stream that outlives the tunnel carrying it, so live SSH sessions survive a
gateway restart.

Both ends are ours: ``ssh-proxy`` on the user's side and the supervisor in the sandbox; the gateway
between them only relays. Each end numbers the bytes it sends, keeps what the peer has not
acknowledged in a bounded buffer, and after a reconnection resends from the offset the peer says it
has. OpenSSH on either side sees one unbroken stream. The wire format is in docs/internals.md.

Layers, so that the protocol can be tested without sockets:

- frames (:func:`encode_frame`, :class:`FrameDecoder`) and control lines (open/resume requests and
  their replies, :func:`resume_proof`);
- :class:`SendBuffer` and :class:`StreamState`: the sans-I/O state of one end (what to send,
  what was received, acknowledgements), and :func:`judge_resume`, the supervisor's resume rules;
- :class:`StreamEnd`: the asyncio driver of one end: a local pump that outlives attachments, and
  :meth:`StreamEnd.attach` which runs one transport until it breaks, goes silent or the stream ends.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import math
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from openshell_core.errors import OpenShellError

MAGIC: Final = "OSRS1"
#: Bytes each end keeps for the peer at most (sent, not yet acknowledged).
BUFFER_LIMIT: Final = 4 * 1024 * 1024
#: Largest data payload of one frame.
MAX_DATA: Final = 64 * 1024
#: Largest control line (request or reply), newline included.
MAX_LINE: Final = 1024
#: Largest ERROR frame text.
MAX_ERROR: Final = 1024
#: Default seconds a detached stream waits for its peer (``ssh-proxy --resume-timeout``).
RESUME_TIMEOUT: Final = 120.0
#: The supervisor never keeps a detached stream longer than this, whatever the peer asks.
MAX_RESUME_TIMEOUT: Final = 3600.0
#: Acknowledge at least every this many received bytes (and at every ping).
ACK_EVERY: Final = 256 * 1024

_HEADER = struct.Struct(">BI")
_OFFSET = struct.Struct(">Q")
_HEX = re.compile(r"[0-9a-f]+")
_STREAM_ID = re.compile(r"[0-9a-f]{32}")
_SECRET = re.compile(r"[0-9a-f]{64}")


class StreamError(OpenShellError):
    """The resumable stream cannot go on (protocol violation, a peer's error, a refusal)."""


class StreamProtocolError(StreamError):
    """The peer sent something the protocol does not allow."""


class StreamOverflow(StreamError):
    """More unacknowledged bytes than the buffer may hold."""


class OffsetOutOfRange(StreamError):
    """A peer asked to resume from an offset this end no longer (or never) held."""


class PeerError(StreamError):
    """The peer ended the stream with an ERROR frame."""


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


# -- frames ------------------------------------------------------------------------------------


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    return _HEADER.pack(int(kind), len(payload)) + payload


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
        while len(self._pending) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._pending)
            if kind not in FrameType._value2member_map_:
                raise StreamProtocolError(f"unknown OSRS1 frame type {kind}")
            frame_type = FrameType(kind)
            exact = frame_type in (FrameType.ACK, FrameType.FIN, FrameType.PING)
            limit = _MAX_PAYLOAD[frame_type]
            if length > limit or (exact and length != limit) or (
                frame_type is FrameType.DATA and length < _OFFSET.size
            ):  # fmt: skip
                raise StreamProtocolError(f"OSRS1 {frame_type.name} frame of {length} bytes")
            end = _HEADER.size + length
            if len(self._pending) < end:
                break
            frames.append(Frame(frame_type, bytes(self._pending[_HEADER.size : end])))
            del self._pending[:end]
        return frames


# -- the sending side's buffer -----------------------------------------------------------------


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


# -- the asyncio driver ------------------------------------------------------------------------


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
