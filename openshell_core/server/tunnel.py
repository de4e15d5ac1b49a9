"""The gateway's SSH tunnel endpoint: ``CONNECT /connect/ssh`` to a sandbox's supervisor.

The TLS front reads the request head and calls :func:`serve_connect`. This module validates it,
asks a :class:`TunnelResolver` (the server's sessions and sandboxes) where to go, enforces the
concurrency limits, connects to the sandbox's port 2222, passes the NSSH1 handshake with the
sandbox's secret and the session token, answers ``200 Connection Established`` and relays bytes
until either side ends. It knows nothing of the store: the resolver is the only way in.

The relay is transparent: what the user's side sends first (an SSH banner, or a resumable-stream
request later) is the supervisor's business, not the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from openshell_core.errors import OpenShellError
from openshell_core.server.sandbox_link import connect
from openshell_core.wire import contract
from openshell_core.wire.nssh1 import HandshakeError, client_handshake
from openshell_core.wire.relay import close_writer, relay

log = logging.getLogger("openshell.server.tunnel")

CONNECT_PATH: Final = contract.CONNECT_PATH
#: Header names as the request parser gives them (lowercased).
SANDBOX_ID_HEADER: Final = contract.SANDBOX_ID_HEADER.lower()
TOKEN_HEADER: Final = contract.TOKEN_HEADER.lower()
#: Concurrent tunnels allowed per session token and per sandbox (upstream's limits).
PER_TOKEN: Final = 3
PER_SANDBOX: Final = 20
#: Seconds to wait before each connection attempt to the sandbox: a sandbox that was just
#: (re)started may not be listening yet.
CONNECT_DELAYS: Final = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
CONNECT_TIMEOUT: Final = 5.0
HANDSHAKE_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class TunnelTarget:
    """Where a tunnel goes, and how to prove it comes from the gateway."""

    sandbox_id: str
    host: str
    port: int
    secret: str = field(repr=False)
    token: str = field(repr=False)
    #: opens the byte stream to the supervisor (a relay, in the ``supervisor`` transport);
    #: None: a TCP connection to ``host:port``
    dial: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] | None = field(
        default=None, repr=False, compare=False
    )


class TunnelRefused(OpenShellError):
    """A CONNECT is answered with ``status`` and ``reason`` instead of being upgraded."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"tunnel refused: {status} {reason}")


class TunnelResolver(Protocol):
    """What the server provides: turn a CONNECT's id and token into a target, or refuse."""

    async def resolve(self, sandbox_id: str, token: str) -> TunnelTarget:
        """:raises TunnelRefused: 401 unknown/revoked/expired token or id mismatch, 404 no such
        sandbox, 412 not Ready, 502 no address."""
        ...


@dataclass
class TunnelLimiter:
    """Counts open tunnels per token and per sandbox."""

    per_token: int = PER_TOKEN
    per_sandbox: int = PER_SANDBOX
    _tokens: dict[str, int] = field(default_factory=dict)
    _sandboxes: dict[str, int] = field(default_factory=dict)

    def open_count(self, *, token: str = "", sandbox_id: str = "") -> int:
        if token:
            return self._tokens.get(token, 0)
        return self._sandboxes.get(sandbox_id, 0)

    @contextlib.contextmanager
    def hold(self, token: str, sandbox_id: str) -> Iterator[None]:
        """Count one tunnel while the block runs.

        :raises TunnelRefused: 429 when either limit is already reached.
        """
        if self._tokens.get(token, 0) >= self.per_token:
            raise TunnelRefused(429, "too many tunnels for this session")
        if self._sandboxes.get(sandbox_id, 0) >= self.per_sandbox:
            raise TunnelRefused(429, "too many tunnels to this sandbox")
        self._tokens[token] = self._tokens.get(token, 0) + 1
        self._sandboxes[sandbox_id] = self._sandboxes.get(sandbox_id, 0) + 1
        try:
            yield
        finally:
            for counts, key in ((self._tokens, token), (self._sandboxes, sandbox_id)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


#: The limiter :func:`serve_connect` uses unless given one: the limits are per gateway process.
DEFAULT_LIMITER: Final = TunnelLimiter()


@dataclass(frozen=True)
class ConnectRequest:
    method: str
    target: str
    headers: dict[str, str]


def parse_request_head(head: bytes) -> ConnectRequest:
    """Parse ``METHOD target HTTP/1.x`` and its headers (names lower-cased).

    :raises TunnelRefused: 400 for a head that is not HTTP/1.
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise TunnelRefused(400, "bad request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise TunnelRefused(400, "bad request")
        headers[name.strip().lower()] = value.strip()
    return ConnectRequest(parts[0], parts[1], headers)


def _credentials(request: ConnectRequest) -> tuple[str, str]:
    """Check the request line and the two headers (upstream's order: 405, then 401, then 400)."""
    if request.method != "CONNECT":
        raise TunnelRefused(405, "method not allowed")
    if request.target != CONNECT_PATH:
        raise TunnelRefused(404, "not found")
    values = []
    for header in (SANDBOX_ID_HEADER, TOKEN_HEADER):
        if header not in request.headers:
            raise TunnelRefused(401, f"missing {header} header")
        values.append(request.headers[header])
    for header, value in zip((SANDBOX_ID_HEADER, TOKEN_HEADER), values, strict=True):
        if not value:
            raise TunnelRefused(400, f"empty {header} header")
    return values[0], values[1]


def status_line(status: int, reason: str) -> bytes:
    safe = "".join(ch if " " <= ch <= "~" else " " for ch in reason).strip() or "error"
    return f"HTTP/1.1 {status} {safe}\r\n\r\n".encode()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(status_line(status, reason))
        await writer.drain()


async def connect_sandbox(
    target: TunnelTarget,
    *,
    delays: Sequence[float] = CONNECT_DELAYS,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the target, retried after each delay; then the NSSH1 handshake.

    :raises TunnelRefused: 502 when the sandbox cannot be reached or rejects the handshake.
    """
    last: BaseException | None = None
    for delay in delays:
        await asyncio.sleep(delay)
        try:
            if target.dial is not None:
                reader, writer = await asyncio.wait_for(target.dial(), connect_timeout * 2)
            else:
                reader, writer = await connect(target.host, target.port, connect_timeout)
            break
        except (OSError, TimeoutError, OpenShellError) as exc:
            last = exc
    else:
        log.warning(
            "SSH tunnel: sandbox %s unreachable at %s:%d (%s)",
            target.sandbox_id,
            target.host,
            target.port,
            last or "no attempt",
        )
        raise TunnelRefused(502, "sandbox unreachable")
    try:
        await asyncio.wait_for(
            client_handshake(reader, writer, target.secret, target.token), HANDSHAKE_TIMEOUT
        )
    except (HandshakeError, OSError, TimeoutError, ValueError) as exc:
        await close_writer(writer)
        log.warning(
            "SSH tunnel: sandbox %s: sandbox handshake rejected (%s)", target.sandbox_id, exc
        )
        raise TunnelRefused(502, "sandbox handshake rejected") from exc
    return reader, writer


async def serve_connect(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request_head: bytes,
    resolver: TunnelResolver,
    *,
    limiter: TunnelLimiter | None = None,
    delays: Sequence[float] = CONNECT_DELAYS,
) -> None:
    """Serve one CONNECT whose head (through the blank line) was already read from ``reader``.

    Answers an error status and returns, or answers 200 and relays until the tunnel ends. Closes
    the sandbox connection; ``writer`` is closed too once the relay ends.
    """
    limiter = DEFAULT_LIMITER if limiter is None else limiter
    try:
        sandbox_id, token = _credentials(parse_request_head(request_head))
        target = await resolver.resolve(sandbox_id, token)
        with limiter.hold(token, target.sandbox_id):
            upstream_reader, upstream_writer = await connect_sandbox(target, delays=delays)
            try:
                writer.write(status_line(200, "Connection Established"))
                await writer.drain()
                log.info("SSH tunnel to sandbox %s open", target.sandbox_id)
                await relay(reader, writer, upstream_reader, upstream_writer)
            finally:
                await close_writer(upstream_writer)
            log.info("SSH tunnel to sandbox %s closed", target.sandbox_id)
    except TunnelRefused as refused:
        if refused.status >= 500:
            log.warning("SSH tunnel refused: %d %s", refused.status, refused.reason)
        else:
            log.info("SSH tunnel refused: %d %s", refused.status, refused.reason)
        await _answer(writer, refused.status, refused.reason)
    except OSError:
        pass  # the client went away; nothing to answer
