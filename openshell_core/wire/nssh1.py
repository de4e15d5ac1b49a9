"""NSSH1: the one-line preface proving that a connection to a sandbox's port 2222 is its gateway's.

The connecting side sends ``NSSH1 {token} {unix_ts} {nonce} {signature}\\n`` where the signature is
the lowercase hex HMAC-SHA256 of ``"{token}|{ts}|{nonce}"`` keyed with the UTF-8 bytes of the
64-character hex secret *text* (not the 32 bytes it encodes: deployed sandboxes expect that).
The sandbox answers ``OK\\n`` or ``ERR\\n``.

Beyond what upstream checked, we refuse fields holding ``|`` (they would make two different
prefaces sign the same message) and compare signatures in constant time.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import heapq
import hmac
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Final

from openshell_core.errors import OpenShellError

MAGIC: Final = "NSSH1"
#: Seconds a preface's timestamp may differ from the verifier's clock, either way.
SKEW_SECONDS: Final = 300
#: Bytes a preface line may take, its newline included.
MAX_PREFACE: Final = 1024
#: Distinct nonces remembered at once; signed prefaces only can fill it, so hitting it means a
#: gateway gone wild, and we refuse rather than forget a nonce that could then be replayed.
MAX_NONCES: Final = 65536

OK_LINE: Final = b"OK\n"
ERR_LINE: Final = b"ERR\n"
#: The answer is ``OK\n`` or ``ERR\n``; anything longer is not an answer.
MAX_ANSWER: Final = 16

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"-?[0-9]{1,19}")
_FIELD = re.compile(r"[\x21-\x7b\x7d\x7e]+")  # printable ASCII without space and "|"


class HandshakeError(OpenShellError):
    """An NSSH1 exchange failed on the connecting side (I/O, a garbled answer)."""


class HandshakeRejected(HandshakeError):
    """The sandbox answered ``ERR``: wrong secret, clock skew, replay or a malformed preface."""

    def __init__(self, message: str = "sandbox handshake rejected", *, answer: bytes = b"") -> None:
        self.answer = answer
        super().__init__(
            message,
            hint="the sandbox's frozen handshake secret may differ from the gateway's, "
            "or the clocks differ by more than the skew window",
        )


class Verdict(enum.Enum):
    """What a verifier made of one preface line."""

    OK = "ok"
    MALFORMED = "malformed preface"
    TOO_LONG = "preface too long"
    BAD_SIGNATURE = "signature mismatch"
    SKEW = "timestamp outside the skew window"
    REPLAY = "nonce replay"
    CACHE_FULL = "nonce cache full"

    @property
    def accepted(self) -> bool:
        return self is Verdict.OK


def generate_secret() -> str:
    """A new handshake secret: 64 lowercase hex characters from the OS's CSPRNG."""
    return secrets.token_hex(32)


def is_valid_secret(text: str) -> bool:
    """True when ``text`` is exactly 64 lowercase hex characters."""
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


def _check_field(name: str, value: str) -> None:
    if not _FIELD.fullmatch(value):
        raise ValueError(f"NSSH1 {name} must be printable ASCII without spaces or '|': {value!r}")


def sign(secret: str, token: str, timestamp: int, nonce: str) -> str:
    """The lowercase hex HMAC-SHA256 of ``token|timestamp|nonce`` keyed with the secret's text."""
    message = f"{token}|{int(timestamp)}|{nonce}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def make_preface(
    secret: str, token: str, *, now: float | None = None, nonce: str | None = None
) -> bytes:
    """One signed preface line, newline included.

    :param now: unix time to stamp (default: the clock).
    :param nonce: default a fresh UUIDv4.
    :raises ValueError: for a token or nonce that cannot travel in a preface.
    """
    nonce = str(uuid.uuid4()) if nonce is None else nonce
    _check_field("token", token)
    _check_field("nonce", nonce)
    timestamp = int(time.time() if now is None else now)
    line = f"{MAGIC} {token} {timestamp} {nonce} {sign(secret, token, timestamp, nonce)}\n"
    data = line.encode()
    if len(data) > MAX_PREFACE:
        raise ValueError(f"NSSH1 preface would take {len(data)} bytes (max {MAX_PREFACE})")
    return data


class PrefaceVerifier:
    """Checks preface lines against one secret, remembering nonces for the skew window.

    A nonce is kept until its preface's timestamp leaves the window (``ts + skew``): exactly as
    long as that preface could otherwise be accepted again. Expired entries are evicted on every
    call, so memory stays bounded by the prefaces of the last ``2 * skew`` seconds (and
    :data:`MAX_NONCES`). Not thread-safe: one verifier per event loop.
    """

    def __init__(
        self,
        secret: str,
        *,
        skew: float = SKEW_SECONDS,
        clock: Callable[[], float] = time.time,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self._key = secret.encode()
        self.skew = skew
        self._clock = clock
        self._max_nonces = max_nonces
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Nonces currently remembered."""
        return len(self._expiry)

    def _evict(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)

    def verify(self, line: bytes) -> Verdict:  # noqa: PLR0911 (one return per verdict)
        """Judge one line (``\\n`` or ``\\r\\n`` included); remember its nonce when accepted."""
        now = self._clock()
        self._evict(now)
        if len(line) > MAX_PREFACE:
            return Verdict.TOO_LONG
        if not line.endswith(b"\n"):
            return Verdict.MALFORMED
        try:
            text = line.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError:
            return Verdict.MALFORMED
        fields = text.split(" ")
        if len(fields) != 5 or fields[0] != MAGIC:
            return Verdict.MALFORMED
        _, token, stamp, nonce, signature = fields
        if not (_FIELD.fullmatch(token) and _FIELD.fullmatch(nonce)):
            return Verdict.MALFORMED
        if not _TIMESTAMP.fullmatch(stamp) or not _HEX64.fullmatch(signature):
            return Verdict.MALFORMED
        timestamp = int(stamp)
        if abs(now - timestamp) > self.skew:
            return Verdict.SKEW
        expected = hmac.new(
            self._key, f"{token}|{timestamp}|{nonce}".encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return Verdict.BAD_SIGNATURE
        # Only signed prefaces reach the cache, so nobody without the secret can fill it.
        if nonce in self._expiry:
            return Verdict.REPLAY
        if len(self._expiry) >= self._max_nonces:
            return Verdict.CACHE_FULL
        expiry = timestamp + self.skew
        self._expiry[nonce] = expiry
        heapq.heappush(self._heap, (expiry, nonce))
        return Verdict.OK


# -- reading a line with a cap -----------------------------------------------------------------
#
# Both readers take one byte at a time on purpose: whatever follows the line (an SSH banner, an
# EXEC1 request) belongs to the next stage and must stay unread.


async def read_line_async(reader: asyncio.StreamReader, *, limit: int = MAX_PREFACE) -> bytes:
    """Read one line from ``reader``, newline included, consuming nothing beyond it.

    Returns early with what was read at end of stream (no newline then), or with ``limit + 1`` bytes
    when the line is longer than ``limit`` (so :meth:`PrefaceVerifier.verify` says TOO_LONG).
    """
    data = bytearray()
    while len(data) <= limit:
        chunk = await reader.read(1)
        if not chunk:
            break
        data += chunk
        if chunk == b"\n":
            break
    return bytes(data)


def read_line_socket(sock: socket.socket, *, limit: int = MAX_PREFACE) -> bytes:
    """:func:`read_line_async` for a blocking socket (its timeout applies to each byte)."""
    data = bytearray()
    while len(data) <= limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if chunk == b"\n":
            break
    return bytes(data)


def check_answer(answer: bytes) -> None:
    """Accept ``OK`` (whitespace around it ignored); raise :class:`HandshakeRejected` otherwise."""
    if answer.strip() != b"OK":
        raise HandshakeRejected(answer=answer)


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: str,
    token: str,
    *,
    now: float | None = None,
) -> None:
    """Send a signed preface and wait for the answer.

    :raises HandshakeRejected: the sandbox answered anything but ``OK`` (or closed).
    """
    writer.write(make_preface(secret, token, now=now))
    await writer.drain()
    check_answer(await read_line_async(reader, limit=MAX_ANSWER))


def client_handshake_socket(sock: socket.socket, secret: str, token: str) -> None:
    """:func:`client_handshake` over a blocking socket."""
    sock.sendall(make_preface(secret, token))
    check_answer(read_line_socket(sock, limit=MAX_ANSWER))
