"""The user's end of the SSH tunnel: ``ssh-proxy``, run by ssh as its ProxyCommand.

It opens mutual TLS to the gateway with the host-side files of ``gateway_files(name)``, sends
``CONNECT /connect/ssh`` with the sandbox id and session token, retries ``412`` (sandbox not
Ready yet) after 1, 2, 4, 8, 8, ... seconds while less than 60 s have passed, fails at once on
any other status, and then relays stdin/stdout to the tunnel.

The relay is a :class:`TunnelRelay`: :class:`PlainRelay` dials once and ends with the tunnel.
Issue 8 adds a resumable relay with the same ``run`` that re-dials (through the same
:class:`GatewayTunnel`) when the tunnel breaks and resumes the stream where it stopped, so that a
live SSH session survives a gateway restart; nothing else here changes for that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

from openshell_core.errors import NotFoundError, OpenShellError
from openshell_core.gateway.metadata import MtlsFiles, gateway_dir, read_metadata
from openshell_core.sandbox.relay import EofPolicy, close_writer, relay, stdio_streams

log = logging.getLogger("openshell.sshproxy")

CONNECT_PATH: Final = "/connect/ssh"
#: 412 is retried while less than this many seconds have passed since the first attempt.
RETRY_WINDOW: Final = 60.0
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 8.0
#: Largest response head read from the gateway.
MAX_HEAD: Final = 8192
CONNECT_TIMEOUT: Final = 30.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Dialer = Callable[[], Awaitable[Streams]]


class ConnectFailed(OpenShellError):
    """The gateway answered the CONNECT with something other than 200 (0: no valid answer)."""

    def __init__(self, status: int) -> None:
        self.status = status
        hints = {
            401: "the session token is unknown, revoked or expired: connect again",
            404: "the sandbox does not exist (any more)",
            412: "the sandbox did not become Ready within a minute",
            429: "too many tunnels are open to this sandbox or with this token",
            502: "the gateway cannot reach the sandbox, or the sandbox rejected its handshake",
        }
        super().__init__(f"gateway CONNECT failed with status {status}", hint=hints.get(status))


# -- the CONNECT exchange ------------------------------------------------------------------------


def connect_request(host: str, sandbox_id: str, token: str) -> bytes:
    for name, value in (("sandbox id", sandbox_id), ("token", token)):
        if not value or any(ch in value for ch in "\r\n"):
            raise ValueError(f"invalid {name} {value!r}")
    return (
        f"CONNECT {CONNECT_PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"X-Sandbox-Id: {sandbox_id}\r\n"
        f"X-Sandbox-Token: {token}\r\n"
        "\r\n"
    ).encode()


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


def backoff() -> Iterator[float]:
    """1, 2, 4, 8, 8, ... seconds."""
    delay = FIRST_BACKOFF
    while True:
        yield delay
        delay = min(delay * 2, MAX_BACKOFF)


@dataclass(frozen=True)
class Attempt:
    """One CONNECT: the status, and the open tunnel when it was 200."""

    status: int
    streams: Streams | None = None


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
    delays = backoff()
    while True:
        result = await attempt()
        if result.status == 200 and result.streams is not None:
            return result.streams
        if result.status == 412 and clock() - started < window:
            delay = next(delays)
            log.info("sandbox is not ready yet (412); retrying in %g s", delay)
            await sleep(delay)
            continue
        raise ConnectFailed(result.status)


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
        """Client TLS: the gateway verified against its CA (and name), our client certificate."""
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise OpenShellError(
                f"cannot load the gateway's mTLS files ({self.ca.parent}): {exc}",
                hint="`pytest-openshell gateway start` writes them again",
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

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
            status = parse_status(await read_response_head(reader))
        except OSError:
            status = 0
        if status == 200:
            return Attempt(200, (reader, writer))
        await close_writer(writer)
        return Attempt(status)

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


# -- the byte pump -------------------------------------------------------------------------------


class TunnelRelay(Protocol):
    """Moves bytes between the local end (ssh's pipes) and tunnels made by ``dial``."""

    async def run(self, local: Streams, dial: Dialer) -> None: ...


class PlainRelay:
    """One tunnel, relayed until the gateway's side ends; a broken tunnel ends the SSH session.

    When stdin ends first the answer is still awaited (TLS cannot pass a half-close on; ssh itself
    never relies on one, and stops this process when it is done).
    """

    async def run(self, local: Streams, dial: Dialer) -> None:
        remote = await dial()
        await relay(local[0], local[1], remote[0], remote[1], a_eof=EofPolicy.WAIT)


async def run_proxy(
    tunnel: GatewayTunnel,
    *,
    relay_with: TunnelRelay | None = None,
    local: Streams | None = None,
) -> None:
    """Open the tunnel, then relay this process's stdin/stdout (or ``local``) through it.

    The tunnel is opened before stdin is touched, so a refused CONNECT leaves ssh's pipes alone.

    :raises ConnectFailed, OpenShellError:
    """
    first = await tunnel.open()
    unused = [first]

    async def dial() -> Streams:
        # The first dial gets the tunnel opened above; a resumable relay dials again.
        return unused.pop() if unused else await tunnel.open()

    if local is None:
        try:
            local = await stdio_streams()
        except ValueError as exc:
            await close_writer(first[1])
            raise OpenShellError(
                "ssh-proxy needs pipes, sockets or a terminal on stdin and stdout",
                hint="use it as ssh's ProxyCommand",
            ) from exc
    await (relay_with or PlainRelay()).run(local, dial)


# -- the ssh command line ------------------------------------------------------------------------


def host_alias(sandbox_id: str) -> str:
    """The name ssh knows a sandbox by (its known_hosts entry and HostKeyAlias)."""
    return f"openshell-{sandbox_id}"


def known_hosts_line(sandbox_id: str, host_public_key: str) -> str:
    """``alias type base64`` for a sandbox's host key (comment dropped)."""
    parts = host_public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an SSH public key line: {host_public_key!r}")
    return f"{host_alias(sandbox_id)} {parts[0]} {parts[1]}"


def proxy_argv(gateway: str, sandbox_id: str, token: str) -> list[str]:
    """How ssh runs ``ssh-proxy``: the console script next to this Python, else ``-c``."""
    script = Path(sys.executable).parent / "pytest-openshell"
    if script.is_file() and os.access(script, os.X_OK):
        head = [str(script)]
    else:
        head = [sys.executable, "-c", "import sys; from openshell_core.cli import main; "
                "sys.exit(main(sys.argv[1:]))"]  # fmt: skip
    # `--flag=value`: a token may begin with "-", which argparse would take for an option.
    return [
        *head,
        "ssh-proxy",
        f"--gateway={gateway}",
        f"--sandbox-id={sandbox_id}",
        f"--token={token}",
    ]


def ssh_command(  # noqa: PLR0917 (positional, as `sandbox connect` calls it)
    gateway: str,
    sandbox_id: str,
    token: str,
    host_public_key: str,
    identity_file: Path | str,
    remote_argv: Sequence[str] = (),
    *,
    known_hosts_file: Path | str | None = None,
    user: str = "root",
) -> list[str]:
    """The ``ssh`` command line that reaches a sandbox through its gateway.

    The sandbox's host key is written (alone) into ``known_hosts_file`` (default: next to the
    gateway's other host-side files, one file per sandbox) and checked strictly under a host alias,
    so a sandbox presenting another key is refused. ``remote_argv`` goes to ssh as it is: ssh joins
    it with spaces and the remote shell parses it, as with any ssh command.
    """
    if known_hosts_file is None:
        known_hosts_file = gateway_dir(gateway) / "ssh" / "known_hosts.d" / sandbox_id
    known_hosts = Path(known_hosts_file)
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    known_hosts.write_text(known_hosts_line(sandbox_id, host_public_key) + "\n")
    # ssh expands %-tokens in ProxyCommand; a literal % must be doubled.
    proxy = shlex.join(proxy_argv(gateway, sandbox_id, token)).replace("%", "%%")
    return [
        "ssh",
        "-i",
        str(identity_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        f"HostKeyAlias={host_alias(sandbox_id)}",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "CheckHostIP=no",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "BatchMode=yes",
        # A gateway that dies under a session must end it, not hang it.
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "LogLevel=ERROR",
        "--",
        f"{user}@{host_alias(sandbox_id)}",
        *remote_argv,
    ]
