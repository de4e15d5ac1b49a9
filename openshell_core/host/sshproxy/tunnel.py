"""The tunnel to a sandbox through the gateway: mutual TLS, ``CONNECT /connect/ssh``, retries."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

from openshell_core.errors import NotFoundError, OpenShellError
from openshell_core.host.metadata import MtlsFiles, read_metadata
from openshell_core.retry import backoff
from openshell_core.wire import contract
from openshell_core.wire.relay import close_writer

log = logging.getLogger("openshell.sshproxy")


CONNECT_PATH: Final = contract.CONNECT_PATH
#: 412 is retried while less than this many seconds have passed since the first attempt.
RETRY_WINDOW: Final = 60.0
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 8.0
#: Largest response head read from the gateway.
MAX_HEAD: Final = 8192
CONNECT_TIMEOUT: Final = 30.0
#: CONNECT statuses that end a resume at once: the token or the sandbox is gone for good.
FINAL_STATUSES: Final = frozenset({400, 401, 404, 405})
#: Seconds to wait for the supervisor's answer to an OSRS1 request.
REPLY_TIMEOUT: Final = 15.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Dialer = Callable[[], Awaitable[Streams]]


class ConnectFailed(OpenShellError):
    """The gateway answered the CONNECT with something other than 200 (0: no valid answer).

    :param reason: the reason phrase of the gateway's status line, which says more than the code
        (``sandbox handshake rejected``, ``sandbox is not ready (ERROR)``).
    """

    def __init__(self, status: int, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        hints = {
            401: "the session token is unknown, revoked or expired: connect again",
            404: "the sandbox does not exist (any more)",
            412: "the sandbox did not become Ready within a minute",
            429: "too many tunnels are open to this sandbox or with this token",
            502: "the gateway cannot reach the sandbox, or the sandbox rejected its handshake",
        }
        hint = hints.get(status)
        if sandbox_failed(status, reason):
            hint = "the sandbox is in ERROR and will not become Ready: `sandbox get` says why"
        detail = f" ({reason})" if reason else ""
        super().__init__(f"gateway CONNECT failed with status {status}{detail}", hint=hint)

    @property
    def final(self) -> bool:
        """No later attempt can succeed: the token or the sandbox is gone, or it failed."""
        return self.status in FINAL_STATUSES or sandbox_failed(self.status, self.reason)


def sandbox_failed(status: int, reason: str) -> bool:
    """A 412 for a sandbox in ERROR: unlike one still starting, it never becomes Ready."""
    return status == 412 and "(ERROR)" in reason


# -- the CONNECT exchange ------------------------------------------------------------------------


def connect_request(host: str, sandbox_id: str, token: str) -> bytes:
    for name, value in (("sandbox id", sandbox_id), ("token", token)):
        if not value or any(ch in value for ch in "\r\n"):
            raise ValueError(f"invalid {name} {value!r}")
    return (
        f"CONNECT {CONNECT_PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"{contract.SANDBOX_ID_HEADER}: {sandbox_id}\r\n"
        f"{contract.TOKEN_HEADER}: {token}\r\n"
        "\r\n"
    ).encode()


def parse_reason(head: bytes) -> str:
    """The reason phrase of ``HTTP/1.x NNN reason``; "" when there is none."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return parts[2].decode("latin-1").strip() if len(parts) == 3 else ""


def parse_status(head: bytes) -> int:
    """The status code of ``HTTP/1.x NNN ...``; 0 when there is none."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
        return int(parts[1])
    return 0


async def read_response_head(reader: asyncio.StreamReader) -> bytes:
    """The response through its blank line (at most :data:`MAX_HEAD` bytes); b"" when garbled.

    Bytes after the head stay in ``reader``: the sandbox may speak first once the tunnel is up.
    """
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return b""


@dataclass(frozen=True)
class Attempt:
    """One CONNECT: the status (and its reason phrase), and the open tunnel when it was 200."""

    status: int
    streams: Streams | None = None
    reason: str = ""


async def connect_with_retry(
    attempt: Callable[[], Awaitable[Attempt]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    window: float = RETRY_WINDOW,
) -> Streams:
    """Make attempts until one is 200; retry 412 with :func:`backoff` within ``window`` seconds.

    :raises ConnectFailed: any other status, or 412 once the window has passed.
    """
    started = clock()
    delays = backoff(FIRST_BACKOFF, 2.0, MAX_BACKOFF)  # 1, 2, 4, 8, 8, ... s
    while True:
        result = await attempt()
        if result.status == 200 and result.streams is not None:
            return result.streams
        failed = sandbox_failed(result.status, result.reason)
        if result.status == 412 and not failed and clock() - started < window:
            delay = next(delays)
            log.info("sandbox is not ready yet (412); retrying in %g s", delay)
            await sleep(delay)
            continue
        raise ConnectFailed(result.status, result.reason)


class Tunnel(Protocol):
    """A way to open byte streams to one sandbox's SSH side: CONNECT (:class:`GatewayTunnel`)
    or ForwardTcp (:class:`~.forward.ForwardTunnel`)."""

    @property
    def sandbox_id(self) -> str: ...

    @property
    def token(self) -> str: ...

    async def open(self) -> Streams:
        """:raises ConnectFailed: the gateway refused."""
        ...

    async def open_once(self) -> Streams:
        """One attempt, for a caller with retries of its own (a resume).

        :raises ConnectFailed: any answer but 200, 412 included.
        """
        ...


@dataclass(frozen=True)
class GatewayTunnel:
    """How to open a tunnel to one sandbox through one gateway."""

    host: str
    port: int
    sandbox_id: str
    token: str = field(repr=False)
    ca: Path
    cert: Path
    key: Path
    connect_timeout: float = CONNECT_TIMEOUT

    @classmethod
    def for_gateway(
        cls, gateway: str, sandbox_id: str, token: str, *, env: Mapping[str, str] | None = None
    ) -> GatewayTunnel:
        """From the host-side metadata and mTLS files of ``gateway``.

        :raises NotFoundError: the gateway was never deployed here.
        :raises MetadataError: its metadata is unusable.
        """
        metadata = read_metadata(gateway, env)
        if metadata is None:
            raise NotFoundError(
                "gateway", gateway, hint="start it with `pytest-openshell gateway start`"
            )
        endpoint = metadata.gateway_endpoint
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        files = MtlsFiles.of(gateway, env)
        return cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 443,
            sandbox_id=sandbox_id,
            token=token,
            ca=files.ca_cert,
            cert=files.cert,
            key=files.key,
        )

    def tls_context(self) -> ssl.SSLContext:
        """Client TLS: the gateway verified against its CA (and name), our client certificate.

        :raises OpenShellError: the files are missing or unusable (a resume retries on it: a
            gateway being bootstrapped again writes them anew).
        """
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise self._unusable_files(exc) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def mtls_pems(self) -> tuple[bytes, bytes, bytes]:
        """The CA certificate, the client key and the client certificate, as PEM bytes (gRPC's
        credentials take them so).

        :raises OpenShellError: as :meth:`tls_context`.
        """
        try:
            return self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        except OSError as exc:
            raise self._unusable_files(exc) from exc

    def _unusable_files(self, exc: Exception) -> OpenShellError:
        return OpenShellError(
            f"cannot load the gateway's mTLS files ({self.ca.parent}): {exc}",
            hint="`pytest-openshell gateway start` writes them again",
        )

    async def attempt(self, context: ssl.SSLContext) -> Attempt:
        """One TLS connection and one CONNECT on it."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.host, limit=65536
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise OpenShellError(
                f"cannot reach gateway at {self.host}:{self.port}: {exc or 'timed out'}",
                hint="is it running? `pytest-openshell gateway status` tells",
            ) from exc
        try:
            writer.write(connect_request(f"{self.host}:{self.port}", self.sandbox_id, self.token))
            await writer.drain()
            head = await read_response_head(reader)
        except OSError:
            head = b""
        except BaseException:  # cancelled: a resume attempt that took too long is let go of
            writer.close()
            raise
        status = parse_status(head)
        if status == 200:
            return Attempt(200, (reader, writer))
        await close_writer(writer)
        return Attempt(status, reason=parse_reason(head))

    async def open(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Streams:
        """An open tunnel (after 412 retries).

        :raises ConnectFailed: the gateway refused.
        """
        context = self.tls_context()
        return await connect_with_retry(lambda: self.attempt(context), clock=clock, sleep=sleep)

    async def open_once(self) -> Streams:
        """:raises ConnectFailed: any answer but 200 (412 too: the caller retries)."""
        return opened(await self.attempt(self.tls_context()))


def opened(result: Attempt) -> Streams:
    """The streams of a 200. :raises ConnectFailed: with the status of any other answer."""
    if result.status == 200 and result.streams is not None:
        return result.streams
    raise ConnectFailed(result.status, result.reason)


# -- the byte pump -------------------------------------------------------------------------------


# -- the user's key --------------------------------------------------------------------------------


# -- the ssh command line ------------------------------------------------------------------------
