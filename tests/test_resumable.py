"""OSRS1, the resumable stream: frames, the bounded buffer, the sans-I/O state of each end and the
supervisor's resume rules. Pure and fast: no sockets, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from openshell_core.wire.osrs1.buffer import SendBuffer
from openshell_core.wire.osrs1.errors import (
    OffsetOutOfRange,
    PeerError,
    StreamOverflow,
    StreamProtocolError,
)
from openshell_core.wire.osrs1.frames import (
    FrameDecoder,
    FrameType,
    data_frame,
    encode_frame,
    error_frame,
    offset_frame,
)
from openshell_core.wire.osrs1.lines import (
    Opened,
    OpenRequest,
    Refusal,
    Refused,
    Resumed,
    ResumeRequest,
    Ticket,
    judge_resume,
    new_stream,
    parse_reply,
    parse_request,
    resume_proof,
    resume_request,
)
from openshell_core.wire.osrs1.stream import StreamState

# -- a transport between two ends, cut after a number of bytes ------------------------------------


@dataclass
class Wire:
    """Both directions of one transport; carries ``budget`` bytes in all, then is broken (the
    rest of a frame in flight is lost, as with a TCP connection that died)."""

    budget: int | None = None
    carried: int = 0
    broken: bool = False

    def carry(self, data: bytes) -> bytes:
        if self.broken:
            return b""
        if self.budget is not None and self.carried + len(data) > self.budget:
            data = data[: self.budget - self.carried]
            self.broken = True
        self.carried += len(data)
        return data


@dataclass
class End:
    """One end and everything it handed to its local side."""

    state: StreamState = field(default_factory=lambda: StreamState(ack_every=3))
    delivered: bytearray = field(default_factory=bytearray)
    finished: bool = False

    def feed(self, data: bytes) -> None:
        incoming = self.state.feed(data)
        self.delivered += incoming.data
        self.finished |= incoming.finished


def shuttle(a: End, b: End, wire: Wire) -> None:
    """Move frames (data, FIN, ACKs) both ways until there is nothing left or the wire breaks."""
    moved = True
    while moved and not wire.broken:
        moved = False
        for src, dst in ((a, b), (b, a)):
            frames = src.state.outgoing() + (src.state.ack_frame() or b"")
            if frames:
                moved = True
                dst.feed(wire.carry(frames))


def reconnect(a: End, b: End) -> None:
    """What the RESUME/RESUMED exchange does: each side learns what the other received."""
    a.state.detach()
    b.state.detach()
    a_received, b_received = a.state.received, b.state.received
    a.state.attach(b_received)
    b.state.attach(a_received)


A_STREAM = [b"SSH-2.0-client\r\n", b"x" * 7, b"last"]
B_STREAM = [b"SSH-2.0-server\r\n", b"reply-1", b"reply-2!"]


def run_exchange(budget: int | None) -> tuple[End, End, Wire]:
    """A short two-way exchange with a FIN each way; the first transport carries ``budget``
    bytes, then the ends reconnect once and finish on a second one."""
    a, b = End(), End()
    a.state.attach(0)
    b.state.attach(0)
    wire = Wire(budget)
    for a_part, b_part in zip(A_STREAM, B_STREAM, strict=True):
        a.state.write(a_part)
        shuttle(a, b, wire)
        b.state.write(b_part)
        shuttle(a, b, wire)
    a.state.finish()
    b.state.finish()
    shuttle(a, b, wire)
    if wire.broken:
        reconnect(a, b)
        shuttle(a, b, Wire())
    return a, b, wire


def test_an_unbroken_exchange_delivers_both_ways_and_acknowledges_everything() -> None:
    a, b, wire = run_exchange(None)
    assert (bytes(b.delivered), bytes(a.delivered)) == (b"".join(A_STREAM), b"".join(B_STREAM))
    assert a.finished and b.finished
    assert a.state.out.fin_acked and b.state.out.fin_acked
    assert a.state.out.held == b.state.out.held == 0
    assert wire.carried > 0


def test_a_break_at_every_byte_offset_loses_and_duplicates_nothing() -> None:
    _, _, whole = run_exchange(None)
    for budget in range(whole.carried + 1):
        a, b, wire = run_exchange(budget)
        assert wire.broken or budget == whole.carried, budget
        assert bytes(b.delivered) == b"".join(A_STREAM), budget
        assert bytes(a.delivered) == b"".join(B_STREAM), budget
        assert a.finished and b.finished, budget
        assert a.state.out.fin_acked and b.state.out.fin_acked, budget


# -- duplicates and disorder ---------------------------------------------------------------------


def test_data_sent_again_after_a_reconnect_is_not_delivered_twice() -> None:
    sender, receiver = End(), End()
    sender.state.attach(0)
    receiver.state.attach(0)
    sender.state.write(b"abcdef")
    receiver.feed(sender.state.outgoing())
    assert receiver.delivered == b"abcdef"
    assert sender.state.out.acked == 0  # no ACK reached the sender: it still holds everything
    sender.state.detach()
    sender.state.attach(0)  # resend from the last acknowledged byte, not from what was received
    sender.state.write(b"gh")
    receiver.feed(sender.state.outgoing())
    assert receiver.delivered == b"abcdefgh"
    assert receiver.state.received == 8


def test_an_overlapping_frame_delivers_only_its_new_bytes() -> None:
    receiver = End()
    receiver.feed(data_frame(0, b"abcd") + data_frame(2, b"cdef") + data_frame(1, b"bc"))
    assert receiver.delivered == b"abcdef"


def test_data_from_beyond_what_was_received_is_refused_never_spliced() -> None:
    receiver = End()
    receiver.feed(data_frame(0, b"abc"))
    with pytest.raises(StreamProtocolError, match="gap"):
        receiver.feed(data_frame(5, b"fgh"))
    assert receiver.delivered == b"abc"


def test_a_fin_sent_again_is_ignored_and_data_after_it_is_refused() -> None:
    receiver = End()
    receiver.feed(data_frame(0, b"ab") + offset_frame(FrameType.FIN, 2))
    receiver.feed(offset_frame(FrameType.FIN, 2))
    assert receiver.finished and receiver.state.received == 3
    with pytest.raises(StreamProtocolError):
        receiver.feed(data_frame(2, b"c"))


def test_frames_split_at_any_byte_decode_the_same() -> None:
    wire = data_frame(0, b"hello") + offset_frame(FrameType.ACK, 4) + encode_frame(FrameType.PING)
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert [frame.kind for frame in frames] == [FrameType.DATA, FrameType.ACK, FrameType.PING]
        assert frames[0].data == b"hello"
        assert frames[1].offset == 4


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(FrameType.ACK, b"\0" * 7),  # an offset is 8 bytes
        encode_frame(FrameType.PING, b"x"),
        encode_frame(FrameType.DATA, b"\0" * 4),
        b"\x09\0\0\0\0",  # unknown type
        b"\x01\xff\xff\xff\xff",  # a DATA frame far beyond the largest payload
    ],
)
def test_malformed_frames_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(StreamProtocolError):
        FrameDecoder().feed(frame)


def test_an_error_frame_ends_the_stream_with_the_peers_reason() -> None:
    with pytest.raises(PeerError, match="sandbox is stopping"):
        End().feed(error_frame("sandbox is stopping"))


# -- the bounded buffer ----------------------------------------------------------------------------


def test_writing_beyond_the_buffer_bound_overflows_and_keeps_nothing_of_the_write() -> None:
    state = StreamState(limit=8)
    state.write(b"12345")
    with pytest.raises(StreamOverflow):
        state.write(b"6789")
    assert state.out.held == 5
    assert state.out.room == 3


def test_acknowledgements_free_the_buffer() -> None:
    buffer = SendBuffer(limit=8)
    buffer.push(b"12345678")
    assert buffer.room == 0
    buffer.ack(6)
    assert (buffer.base, buffer.held, buffer.room) == (6, 2, 6)
    buffer.push(b"abcdef")
    assert buffer.read(6, 100) == b"78abcdef"


def test_an_acknowledgement_going_back_or_beyond_what_was_sent_is_refused() -> None:
    buffer = SendBuffer()
    buffer.push(b"abc")
    buffer.ack(2)
    with pytest.raises(StreamProtocolError):
        buffer.ack(1)
    with pytest.raises(StreamProtocolError):
        buffer.ack(4)  # the FIN position does not exist before finish()
    buffer.finish()
    buffer.ack(4)
    assert buffer.fin_acked


def test_a_resume_offset_outside_the_buffer_is_refused() -> None:
    state = StreamState()
    state.attach(0)
    state.write(b"abcdef")
    state.out.ack(4)
    state.detach()
    for offset in (3, 7):  # before what the peer acknowledged; beyond what was ever sent
        with pytest.raises(OffsetOutOfRange):
            state.attach(offset)
    state.attach(6)
    assert state.outgoing() == b""


# -- control lines -------------------------------------------------------------------------------


def test_control_lines_round_trip() -> None:
    opened = new_stream()
    request = resume_request(opened, "tok", 3, 1234)
    assert parse_request(OpenRequest(45).encode()) == OpenRequest(45)
    assert parse_request(request.encode()) == request
    assert parse_reply(opened.encode()) == opened
    assert parse_reply(Resumed(99).encode()) == Resumed(99)
    assert parse_reply(Refused(Refusal.BUSY, "try later").encode()) == Refused(
        Refusal.BUSY, "try later"
    )


def test_the_secret_never_travels_in_a_resume_request() -> None:
    opened = new_stream()
    line = resume_request(opened, "tok", 1, 0).encode()
    assert opened.secret.encode() not in line
    assert opened.stream_id.encode() in line


def test_an_open_request_asking_too_long_a_wait_is_capped() -> None:
    assert parse_request(b"OSRS1 OPEN 999999\n") == OpenRequest(3600)


@pytest.mark.parametrize(
    "line",
    [
        b"OSRS1 OPEN\n",
        b"OSRS1 OPEN nan\n",
        b"OSRS1 RESUME abc 1 0 " + b"0" * 64 + b"\n",
        b"OSRS1 RESUME " + b"a" * 32 + b" -1 0 " + b"0" * 64 + b"\n",
        b"OSRS1 JUMP\n",
        b"OSRS1 OPEN 5",
        b"OSRS2 OPEN 5\n",
    ],
)
def test_malformed_requests_are_refused(line: bytes) -> None:
    with pytest.raises(StreamProtocolError):
        parse_request(line)


# -- the supervisor's resume rules ---------------------------------------------------------------


@pytest.fixture
def ticket() -> Ticket:
    opened = new_stream()
    return Ticket(opened.stream_id, "session-token", opened.secret)


def request_for(ticket: Ticket, *, generation: int = 1, secret: str | None = None) -> ResumeRequest:
    opened = Opened(ticket.stream_id, secret or ticket.secret)
    return resume_request(opened, ticket.token, generation, 0)


def test_a_resume_with_the_right_token_and_proof_goes_ahead(ticket: Ticket) -> None:
    assert judge_resume(ticket, "session-token", request_for(ticket), alive=False) is None
    assert ticket.generation == 1


def test_a_resume_of_an_unknown_stream_is_refused(ticket: Ticket) -> None:
    verdict = judge_resume(None, "session-token", request_for(ticket), alive=False)
    assert verdict is not None and verdict.code is Refusal.UNKNOWN


def test_a_resume_with_a_wrong_secret_is_refused(ticket: Ticket) -> None:
    forged = request_for(ticket, secret=new_stream().secret)
    verdict = judge_resume(ticket, "session-token", forged, alive=False)
    assert verdict is not None and verdict.code is Refusal.REFUSED
    assert ticket.generation == 0  # a failed proof uses nothing up


def test_a_resume_with_another_session_token_is_refused(ticket: Ticket) -> None:
    verdict = judge_resume(ticket, "other-token", request_for(ticket), alive=False)
    assert verdict is not None and verdict.code is Refusal.REFUSED


def test_a_resume_of_a_stream_attached_to_a_live_tunnel_is_refused_as_busy(ticket: Ticket) -> None:
    verdict = judge_resume(ticket, "session-token", request_for(ticket), alive=True)
    assert verdict is not None and verdict.code is Refusal.BUSY


def test_a_replayed_resume_request_is_refused(ticket: Ticket) -> None:
    request = request_for(ticket, generation=1)
    assert judge_resume(ticket, "session-token", request, alive=True) is not None  # busy
    verdict = judge_resume(ticket, "session-token", request, alive=False)
    assert verdict is not None and verdict.code is Refusal.REFUSED
    assert (
        judge_resume(ticket, "session-token", request_for(ticket, generation=2), alive=False)
        is None
    )


def test_a_proof_is_bound_to_its_offset() -> None:
    opened = new_stream()
    assert resume_proof(opened.secret, opened.stream_id, "t", 1, 0) != resume_proof(
        opened.secret, opened.stream_id, "t", 1, 1
    )
