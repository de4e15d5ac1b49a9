"""The user's end of the SSH tunnel: ``ssh-proxy``, run by ssh as its ProxyCommand.

It opens mutual TLS to the gateway with the host-side files of ``gateway_files(name)``, sends
``CONNECT /connect/ssh`` with the sandbox id and session token, retries ``412`` (sandbox not
Ready yet) after 1, 2, 4, 8, 8, ... seconds while less than 60 s have passed, fails at once on
any other status, and then relays stdin/stdout to the tunnel.

The relay is a :class:`TunnelRelay`: :class:`PlainRelay` dials once and ends with the tunnel;
:class:`ResumableRelay` (the default of ``ssh-proxy``) opens an OSRS1 stream
(:mod:`openshell_core.sandbox.resumable`), and when the tunnel breaks re-dials through the same
:class:`GatewayTunnel` and resumes the stream where it stopped, so that a live SSH session survives
a gateway restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlparse

from openshell_core import contract
from openshell_core.errors import NotFoundError, OpenShellError
from openshell_core.gateway.metadata import MtlsFiles, gateway_dir, read_metadata
from openshell_core.retry import backoff
from openshell_core.sandbox.relay import EofPolicy, close_writer, relay, stdio_streams
from openshell_core.sandbox.resumable import (
    BUFFER_LIMIT,
    DEFAULT_LIVENESS,
    RESUME_TIMEOUT,
    Detach,
    Liveness,
    OffsetOutOfRange,
    Opened,
    OpenRequest,
    PeerError,
    Refusal,
    Refused,
    Resumed,
    StreamEnd,
    StreamError,
    StreamProtocolError,
    StreamState,
    parse_reply,
    read_line,
    resume_request,
)

log = logging.getLogger("openshell.sshproxy")

CONNECT_PATH: Final = contract.CONNECT_PATH
#: 412 is retried while less than this many seconds have passed since the first attempt.
RETRY_WINDOW: Final = 60.0
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 8.0
#: Largest response head read from the gateway.
MAX_HEAD: Final = 8192
CONNECT_TIMEOUT: Final = 30.0
#: A resume attempt follows the last one after 0.2, 0.24, 0.29, ... (times 1.2) up to 2 seconds:
#: a gateway that restarts answers again within a second or so, and a refused attempt is cheap.
RESUME_FIRST_BACKOFF: Final = 0.2
RESUME_BACKOFF_FACTOR: Final = 1.2
RESUME_MAX_BACKOFF: Final = 2.0
#: Seconds the first resume attempt may take to open a tunnel; each that runs out doubles it.
RESUME_FIRST_ATTEMPT_TIMEOUT: Final = 0.25
#: CONNECT statuses that end a resume at once: the token or the sandbox is gone for good.
FINAL_STATUSES: Final = frozenset({400, 401, 404, 405})
#: Seconds to wait for the supervisor's answer to an OSRS1 request.
REPLY_TIMEOUT: Final = 15.0
#: ssh's own keepalive: a probe after this many seconds of silence from the server.
SERVER_ALIVE_INTERVAL: Final = 10

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


class SessionLost(OpenShellError):
    """A resumable SSH session ended before its remote end finished it."""


@dataclass
class ResumableRelay:
    """An OSRS1 stream through the tunnel, resumed through new tunnels when one breaks.

    A break is noticed by the tunnel closing or by its silence (the supervisor pings every
    second). Then ``dial`` is called again (0.2 s apart, growing by a fifth up to 2 s) until a
    new tunnel resumes the stream, for at most ``resume_timeout`` seconds; each break and each
    resume is logged (the resume with how long the stream stalled). A sandbox that does not know
    the stream any more (it restarted) ends the session at once. A sandbox that does not speak
    OSRS1 at all gets a plain session.

    The end of the local input means ssh is gone: it is passed on (so the supervisor ends sshd
    and forgets the stream at once) but never resumed for.
    """

    sandbox_id: str
    token: str = field(repr=False)
    resume_timeout: float = RESUME_TIMEOUT
    liveness: Liveness = DEFAULT_LIVENESS
    buffer_limit: int = BUFFER_LIMIT
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def for_tunnel(
        cls, tunnel: GatewayTunnel, *, resume_timeout: float = RESUME_TIMEOUT
    ) -> ResumableRelay:
        return cls(tunnel.sandbox_id, tunnel.token, resume_timeout=resume_timeout)

    async def run(self, local: Streams, dial: Dialer) -> None:
        """:raises SessionLost: the session could not go on (see the message)."""
        reader, writer = await dial()
        opened = await self._open(reader, writer)
        if opened is None:
            log.warning(
                "sandbox %s does not offer resumable sessions: this one will not survive a "
                "gateway restart",
                self.sandbox_id,
            )
            await PlainRelay().run(local, dial)
            return
        state = StreamState(self.buffer_limit)
        end = StreamEnd(
            state,
            local[0],
            local[1],
            # Done when the sandbox's side ended (and we said we have it all), or when ours did
            # (ssh went away) and the supervisor has that.
            done=lambda stream: stream.peer_fin_acked or stream.out.fin_acked,
            liveness=self.liveness,
            clock=self.clock,
        )
        peer_received, generation = 0, 0
        try:
            while True:
                try:
                    outcome = await end.attach(reader, writer, peer_received)
                except PeerError as exc:
                    raise SessionLost(
                        f"sandbox {self.sandbox_id} ended the SSH session: {exc.message}"
                    ) from exc
                except StreamError as exc:
                    raise SessionLost(f"the SSH session's stream broke: {exc.message}") from exc
                if outcome is Detach.COMPLETE:
                    return
                if state.out.finished or state.peer_finished:
                    # ssh has gone (our input ended), or the sandbox's side has ended and all of
                    # it arrived: nothing is left to resume the session for.
                    log.info("tunnel to sandbox %s closed as the session ended", self.sandbox_id)
                    return
                stalled_since = end.last_heard
                log.warning(
                    "tunnel to sandbox %s broke (%s); reconnecting through the gateway "
                    "(for up to %g s)",
                    self.sandbox_id,
                    outcome.value,
                    self.resume_timeout,
                )
                resumed = await self._resume(dial, opened, state, generation)
                if resumed is None:
                    log.info("ssh went away while the tunnel was down; not resuming")
                    return
                reader, writer, peer_received, generation = resumed
                log.info(
                    "tunnel to sandbox %s resumed after %.1f s",
                    self.sandbox_id,
                    self.clock() - stalled_since,
                )
        finally:
            await end.close()

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Opened | None:
        """The supervisor's OPENED; None when it closed instead (it predates OSRS1)."""
        try:
            writer.write(OpenRequest(self.resume_timeout).encode())
            await writer.drain()
        except OSError:
            pass
        line = await read_line(reader, REPLY_TIMEOUT)
        if not line:
            await close_writer(writer)
            return None
        try:
            reply = parse_reply(line)
        except StreamProtocolError as exc:
            await close_writer(writer)
            raise SessionLost(
                f"sandbox {self.sandbox_id} answered the resumable-session request with "
                f"something else: {exc.message}",
                hint="`--no-resume` opens a plain session",
            ) from exc
        if isinstance(reply, Opened):
            return reply
        await close_writer(writer)
        detail = f"{reply.code.value}: {reply.message}" if isinstance(reply, Refused) else "?"
        raise SessionLost(
            f"sandbox {self.sandbox_id} refused a resumable session ({detail})",
            hint="`--no-resume` opens a plain session",
        )

    async def _resume(
        self, dial: Dialer, opened: Opened, state: StreamState, generation: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, int] | None:
        """A new tunnel on which the stream was resumed, what the supervisor had received, and
        the generation of the resume that worked; None when ssh went away meanwhile.

        :raises SessionLost: the time is up, or the gateway or the sandbox said no for good.
        """
        deadline = self.clock() + self.resume_timeout
        delays = backoff(RESUME_FIRST_BACKOFF, RESUME_BACKOFF_FACTOR, RESUME_MAX_BACKOFF)
        # While a gateway container starts, Docker's port proxy may accept a connection whose
        # way on into the container is not there yet; that SYN is resent only a second later.
        # So an attempt that hangs gives way to a new one, and each may wait twice as long.
        patience = RESUME_FIRST_ATTEMPT_TIMEOUT
        problem = "no attempt made"
        while True:
            if state.out.finished:
                return None
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise SessionLost(
                    f"tunnel to sandbox {self.sandbox_id} could not be resumed within "
                    f"{self.resume_timeout:g} s (last: {problem}); the SSH session is lost",
                    hint="bring the gateway back (`pytest-openshell gateway start`), then "
                    "connect again",
                )
            try:
                reader, writer = await asyncio.wait_for(dial(), min(remaining, patience))
            except ConnectFailed as exc:
                if exc.final:
                    raise SessionLost(
                        f"the gateway refused to resume the tunnel to sandbox "
                        f"{self.sandbox_id}: {exc.message}",
                        hint=exc.hint,
                    ) from exc
                problem = exc.message
            except TimeoutError:
                problem = f"the gateway did not answer within {patience:g} s"
                patience = min(patience * 2, CONNECT_TIMEOUT)
            except OpenShellError as exc:
                problem = exc.message
            else:
                generation += 1
                request = resume_request(opened, self.token, generation, state.received)
                wait = min(REPLY_TIMEOUT, max(1.0, deadline - self.clock()))
                reply = await self._ask(reader, writer, request.encode(), wait)
                if isinstance(reply, Resumed):
                    try:
                        state.check_resume(reply.offset)
                    except OffsetOutOfRange as exc:
                        await close_writer(writer)
                        raise SessionLost(
                            f"sandbox {self.sandbox_id} resumed at an offset this end no longer "
                            f"holds: {exc.message}"
                        ) from exc
                    return reader, writer, reply.offset, generation
                await close_writer(writer)
                problem = self._judge_refusal(reply)
            await self.sleep(min(next(delays), max(0.0, deadline - self.clock())))

    def _judge_refusal(self, reply: Refused | None) -> str:
        """What to retry on (returned as the problem to report); :raises SessionLost: else."""
        if reply is None:
            return "no answer from the sandbox"
        if reply.code is Refusal.BUSY:
            return "the sandbox still holds the old tunnel"
        if reply.code is Refusal.UNKNOWN:
            raise SessionLost(
                f"the SSH session in sandbox {self.sandbox_id} is gone: the sandbox restarted "
                "(or gave the session up) while the tunnel was down",
                hint="connect again for a new session",
            )
        raise SessionLost(
            f"sandbox {self.sandbox_id} refused to resume the SSH session "
            f"({reply.code.value}: {reply.message})"
        )

    async def _ask(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        timeout: float,
    ) -> Resumed | Refused | None:
        """Send a RESUME; the answer, or None when there was none (or a garbled one)."""
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            return None
        line = await read_line(reader, timeout)
        try:
            reply = parse_reply(line) if line else None
        except StreamProtocolError:
            return None
        return reply if isinstance(reply, Resumed | Refused) else None


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


# -- the user's key --------------------------------------------------------------------------------


def ensure_user_key(key: Path, *, comment: str) -> Path:
    """An ed25519 key pair at ``key`` (and ``key.pub``), made once with ``ssh-keygen``.

    :raises OpenShellError: when ``ssh-keygen`` is missing or fails.
    """
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise OpenShellError("ssh-keygen is not installed", hint="install openssh-client") from None
    if result.returncode != 0:
        raise OpenShellError(
            f"ssh-keygen failed: {result.stderr.strip()}", hint="install openssh-client"
        )
    log.info("made SSH key %s", key)
    return key


# -- the ssh command line ------------------------------------------------------------------------


def server_alive_count(resume_timeout: float) -> int:
    """Unanswered keepalives after which ssh gives up: 3 (30 s) for a plain session; for a
    resumable one enough to outlast the proxy's own wait (plus noticing the break and
    reconnecting)."""
    slack = DEFAULT_LIVENESS.dead_after + 25
    return max(3, math.ceil((resume_timeout + slack) / SERVER_ALIVE_INTERVAL))


def host_alias(sandbox_id: str) -> str:
    """The name ssh knows a sandbox by (its known_hosts entry and HostKeyAlias)."""
    return f"openshell-{sandbox_id}"


def known_hosts_line(sandbox_id: str, host_public_key: str) -> str:
    """``alias type base64`` for a sandbox's host key (comment dropped)."""
    parts = host_public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an SSH public key line: {host_public_key!r}")
    return f"{host_alias(sandbox_id)} {parts[0]} {parts[1]}"


def proxy_argv(
    gateway: str,
    sandbox_id: str,
    token: str,
    *,
    resume: bool = True,
    resume_timeout: float = RESUME_TIMEOUT,
) -> list[str]:
    """How ssh runs ``ssh-proxy``: the console script next to this Python, else ``-c``.

    The resume options are only spelled out when they differ from the defaults.
    """
    script = Path(sys.executable).parent / "pytest-openshell"
    if script.is_file() and os.access(script, os.X_OK):
        head = [str(script)]
    else:
        head = [sys.executable, "-c", "import sys; from openshell_core.cli import main; "
                "sys.exit(main(sys.argv[1:]))"]  # fmt: skip
    options = []
    if not resume:
        options.append("--no-resume")
    elif resume_timeout != RESUME_TIMEOUT:
        options.append(f"--resume-timeout={resume_timeout:g}")
    # `--flag=value`: a token may begin with "-", which argparse would take for an option.
    return [
        *head,
        "ssh-proxy",
        *options,
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
    resume: bool = True,
    resume_timeout: float = RESUME_TIMEOUT,
) -> list[str]:
    """The ``ssh`` command line that reaches a sandbox through its gateway.

    With ``resume`` the proxy keeps the session across tunnel breaks for up to ``resume_timeout``
    seconds, so ssh's own keepalive is made to wait longer than that (and no longer: a hung
    proxy still ends the session).

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
    argv = proxy_argv(gateway, sandbox_id, token, resume=resume, resume_timeout=resume_timeout)
    proxy = shlex.join(argv).replace("%", "%%")
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
        f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
        "-o",
        f"ServerAliveCountMax={server_alive_count(resume_timeout if resume else 0)}",
        "-o",
        "LogLevel=ERROR",
        "--",
        f"{user}@{host_alias(sandbox_id)}",
        *remote_argv,
    ]
