"""NSSH1 preface: signing, verification (skew, replay, size, shape) and the capped line readers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket

import pytest

from openshell_core.wire import nssh1 as handshake
from openshell_core.wire.nssh1 import (
    MAX_PREFACE,
    SKEW_SECONDS,
    HandshakeRejected,
    PrefaceVerifier,
    Verdict,
    generate_secret,
    is_valid_secret,
    make_preface,
    sign,
)

SECRET = "0123456789abcdef" * 4
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, **options: object) -> PrefaceVerifier:
    return PrefaceVerifier(SECRET, clock=clock or Clock(), **options)  # type: ignore[arg-type]


def test_generated_secret_is_64_lowercase_hex_and_fresh() -> None:
    first, second = generate_secret(), generate_secret()
    assert is_valid_secret(first)
    assert first != second


@pytest.mark.parametrize(
    "text", ["", "ABCDEF" + "0" * 58, "0" * 63, "0" * 65, "g" * 64, " " + "0" * 63]
)
def test_is_valid_secret_refuses_anything_but_64_lowercase_hex(text: str) -> None:
    assert not is_valid_secret(text)


def test_signature_keys_hmac_with_the_hex_text_not_the_decoded_bytes() -> None:
    expected = hmac.new(SECRET.encode(), b"tok|1700000000|n1", hashlib.sha256).hexdigest()
    decoded = hmac.new(bytes.fromhex(SECRET), b"tok|1700000000|n1", hashlib.sha256).hexdigest()
    assert sign(SECRET, "tok", 1_700_000_000, "n1") == expected
    assert expected != decoded


def test_preface_has_five_fields_and_a_newline() -> None:
    line = make_preface(SECRET, "tok", now=NOW, nonce="n1")
    assert line == f"NSSH1 tok 1700000000 n1 {sign(SECRET, 'tok', 1_700_000_000, 'n1')}\n".encode()


def test_preface_nonce_defaults_to_a_fresh_uuid() -> None:
    first = make_preface(SECRET, "tok", now=NOW).split()[3]
    second = make_preface(SECRET, "tok", now=NOW).split()[3]
    assert first != second
    assert len(first) == 36


@pytest.mark.parametrize("token", ["a|b", "a b", "", "tök"])
def test_preface_refuses_a_token_that_cannot_travel(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        make_preface(SECRET, token, now=NOW)


def test_good_preface_is_accepted() -> None:
    assert verifier().verify(make_preface(SECRET, "tok", now=NOW)) is Verdict.OK


def test_crlf_terminated_preface_is_accepted() -> None:
    line = make_preface(SECRET, "tok", now=NOW).rstrip(b"\n") + b"\r\n"
    assert verifier().verify(line) is Verdict.OK


def test_preface_signed_with_another_secret_is_a_bad_signature() -> None:
    line = make_preface(generate_secret(), "tok", now=NOW)
    assert verifier().verify(line) is Verdict.BAD_SIGNATURE


def test_preface_signed_with_the_decoded_secret_bytes_is_a_bad_signature() -> None:
    nonce = "n1"
    forged = hmac.new(bytes.fromhex(SECRET), f"tok|{int(NOW)}|{nonce}".encode(), hashlib.sha256)
    line = f"NSSH1 tok {int(NOW)} {nonce} {forged.hexdigest()}\n".encode()
    assert verifier().verify(line) is Verdict.BAD_SIGNATURE


def test_tampered_token_is_a_bad_signature() -> None:
    line = make_preface(SECRET, "tok", now=NOW).replace(b"tok", b"tak")
    assert verifier().verify(line) is Verdict.BAD_SIGNATURE


def test_uppercase_signature_is_malformed() -> None:
    fields = make_preface(SECRET, "tok", now=NOW).decode().split()
    fields[4] = fields[4].upper()
    assert verifier().verify((" ".join(fields) + "\n").encode()) is Verdict.MALFORMED


@pytest.mark.parametrize("offset", [SKEW_SECONDS + 1, -(SKEW_SECONDS + 1)])
def test_timestamp_beyond_the_skew_window_either_way_is_refused(offset: float) -> None:
    line = make_preface(SECRET, "tok", now=NOW + offset)
    assert verifier().verify(line) is Verdict.SKEW


@pytest.mark.parametrize("offset", [SKEW_SECONDS, -SKEW_SECONDS])
def test_timestamp_at_the_edge_of_the_window_is_accepted(offset: float) -> None:
    line = make_preface(SECRET, "tok", now=NOW + offset)
    assert verifier().verify(line) is Verdict.OK


def test_skew_window_is_configurable() -> None:
    line = make_preface(SECRET, "tok", now=NOW - 20)
    assert verifier(skew=10).verify(line) is Verdict.SKEW


def test_same_preface_twice_is_a_replay() -> None:
    check = verifier()
    line = make_preface(SECRET, "tok", now=NOW)
    assert check.verify(line) is Verdict.OK
    assert check.verify(line) is Verdict.REPLAY


def test_same_nonce_with_another_token_is_a_replay() -> None:
    check = verifier()
    assert check.verify(make_preface(SECRET, "one", now=NOW, nonce="n1")) is Verdict.OK
    assert check.verify(make_preface(SECRET, "two", now=NOW, nonce="n1")) is Verdict.REPLAY


def test_replay_after_the_window_is_refused_for_skew_and_the_nonce_is_forgotten() -> None:
    clock = Clock()
    check = verifier(clock)
    line = make_preface(SECRET, "tok", now=NOW)
    assert check.verify(line) is Verdict.OK
    clock.now = NOW + SKEW_SECONDS + 1
    assert check.verify(line) is Verdict.SKEW
    assert len(check) == 0


def test_nonces_are_evicted_once_their_preface_leaves_the_window() -> None:
    clock = Clock()
    check = verifier(clock)
    for index in range(5):
        assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce=f"n{index}")) is Verdict.OK
    clock.now = NOW + SKEW_SECONDS / 2
    assert check.verify(make_preface(SECRET, "tok", now=clock.now)) is Verdict.OK
    assert len(check) == 6
    clock.now = NOW + SKEW_SECONDS + 1
    check.verify(b"garbage\n")
    assert len(check) == 1


def test_full_nonce_cache_refuses_rather_than_forgets() -> None:
    check = verifier(max_nonces=2)
    assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce="a")) is Verdict.OK
    assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce="b")) is Verdict.OK
    assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce="c")) is Verdict.CACHE_FULL
    assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce="a")) is Verdict.REPLAY


def test_rejected_preface_does_not_burn_its_nonce() -> None:
    check = verifier()
    bad = make_preface(generate_secret(), "tok", now=NOW, nonce="n1")
    assert check.verify(bad) is Verdict.BAD_SIGNATURE
    assert check.verify(make_preface(SECRET, "tok", now=NOW, nonce="n1")) is Verdict.OK


def test_line_longer_than_the_cap_is_too_long() -> None:
    token = "t" * MAX_PREFACE
    line = f"NSSH1 {token} {int(NOW)} n1 {sign(SECRET, token, int(NOW), 'n1')}\n".encode()
    assert len(line) > MAX_PREFACE
    assert verifier().verify(line) is Verdict.TOO_LONG


@pytest.mark.parametrize(
    "line",
    [
        b"\n",
        b"NSSH1\n",
        b"NSSH1 tok 1700000000 n1\n",
        b"NSSH1 tok 1700000000 n1 " + b"0" * 64 + b" extra\n",
        b"NSSH2 tok 1700000000 n1 " + b"0" * 64 + b"\n",
        b"nssh1 tok 1700000000 n1 " + b"0" * 64 + b"\n",
        b"NSSH1  tok 1700000000 n1 " + b"0" * 64 + b"\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
    ids=[
        "empty",
        "magic-only",
        "four-fields",
        "six-fields",
        "wrong-magic",
        "lowercase-magic",
        "double-space",
        "ssh-banner",
    ],
)
def test_wrong_shape_is_malformed(line: bytes) -> None:
    assert verifier().verify(line) is Verdict.MALFORMED


@pytest.mark.parametrize("stamp", ["abc", "17e8", "1.5", "", "0x10", "99999999999999999999"])
def test_non_numeric_timestamp_is_malformed(stamp: str) -> None:
    line = f"NSSH1 tok {stamp} n1 {'0' * 64}\n".encode()
    assert verifier().verify(line) is Verdict.MALFORMED


def test_line_without_newline_is_malformed() -> None:
    assert verifier().verify(make_preface(SECRET, "tok", now=NOW).rstrip()) is Verdict.MALFORMED


def test_non_ascii_line_is_malformed() -> None:
    assert verifier().verify(b"NSSH1 t\xff 1700000000 n1 " + b"0" * 64 + b"\n") is Verdict.MALFORMED


def test_field_with_a_pipe_is_malformed_even_when_signed() -> None:
    # "a|1" + ts + "n" and "a" + ts=1 + ... would collide in the signed message.
    stamp = int(NOW)
    line = f"NSSH1 a|b {stamp} n1 {sign(SECRET, 'a|b', stamp, 'n1')}\n".encode()
    assert verifier().verify(line) is Verdict.MALFORMED


def test_async_reader_stops_at_the_newline_and_leaves_the_rest() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"NSSH1 a b c d\nSSH-2.0-x\r\n")
        reader.feed_eof()
        line = await handshake.read_line_async(reader)
        return line, await reader.read()

    line, rest = asyncio.run(scenario())
    assert line == b"NSSH1 a b c d\n"
    assert rest == b"SSH-2.0-x\r\n"


def test_async_reader_returns_one_byte_past_the_cap_for_an_endless_line() -> None:
    async def scenario() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(b"x" * 5000)
        return await handshake.read_line_async(reader)

    line = asyncio.run(scenario())
    assert len(line) == MAX_PREFACE + 1
    assert verifier().verify(line) is Verdict.TOO_LONG


def test_async_reader_returns_the_partial_line_at_end_of_stream() -> None:
    async def scenario() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(b"NSSH1 partial")
        reader.feed_eof()
        return await handshake.read_line_async(reader)

    assert asyncio.run(scenario()) == b"NSSH1 partial"


def test_socket_reader_stops_at_the_newline_and_leaves_the_rest() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"OK\nSSH-2.0-x\r\n")
        left.shutdown(socket.SHUT_WR)
        assert handshake.read_line_socket(right) == b"OK\n"
        assert right.recv(100) == b"SSH-2.0-x\r\n"


def test_socket_reader_caps_an_endless_line() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"y" * 3000)
        assert len(handshake.read_line_socket(right)) == MAX_PREFACE + 1


def test_client_handshake_accepts_ok_and_rejects_err() -> None:
    async def answer_with(answer: bytes) -> bytes:
        check = verifier(Clock(NOW))
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await handshake.read_line_async(reader)
            seen.append(line)
            assert check.verify(line) is Verdict.OK
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await handshake.client_handshake(reader, writer, SECRET, "tok", now=NOW)
            finally:
                writer.close()
        return seen[0]

    assert asyncio.run(answer_with(b"OK\n")).startswith(b"NSSH1 tok ")
    with pytest.raises(HandshakeRejected):
        asyncio.run(answer_with(b"ERR\n"))
