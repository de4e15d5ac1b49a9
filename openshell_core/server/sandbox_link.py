"""The gateway's side of a sandbox's port 2222: connect, pass the NSSH1 preface, then speak a mode.

:func:`open_ssh_stream` hands the stream to the caller (SSH relays, OSRS1); :func:`exec_in_sandbox`
runs one command over EXEC1 (:mod:`openshell_core.wire.exec1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Final

from openshell_core.errors import OpenShellError
from openshell_core.wire.exec1 import (
    ExecEvent,
    ExecRequest,
    ExecStream,
    SandboxProtocolError,
    read_frame,
)
from openshell_core.wire.nssh1 import HandshakeError, HandshakeRejected, client_handshake

#: Opens the byte stream to a supervisor another way than TCP (a relay).
Dial = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
#: Seconds to wait for the TCP connection to a sandbox.
CONNECT_TIMEOUT: Final = 10.0


class SandboxUnreachable(OpenShellError):
    """No TCP connection to a sandbox's supervisor could be made."""


async def connect(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``host:port`` (a sandbox's supervisor), within ``timeout`` seconds.

    The name is looked up in a daemon thread of its own (:func:`lookup`), not in the event
    loop's executor, where ``asyncio.open_connection`` puts it.

    :raises OSError, TimeoutError: no address, or no connection in time.
    """
    async with asyncio.timeout(timeout):
        address = await lookup(host, port)
        return await asyncio.open_connection(address, port)


async def lookup(host: str, port: int) -> str:
    """The first address of ``host`` (``host`` itself when it is one).

    Why a thread of its own: the platform's DNS may leave a name it does not know unanswered (a
    sandbox whose runtime is down), and the C library waits 10 s for it. In the loop's
    executor such lookups outlived the probes that made them: they took its few threads from
    every other blocking call, and the gateway's exit after SIGTERM waited for them (a stop took
    7 s instead of 0.2 s). A daemon thread is dropped at exit; the caller's timeout still ends
    the wait.

    :raises OSError: the name has no address.
    """
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    loop = asyncio.get_running_loop()
    found: asyncio.Future[str] = loop.create_future()

    def settle(address: str | None, error: OSError | None) -> None:
        if not found.done():  # the caller may have given up (timeout, cancellation)
            if error is not None:
                found.set_exception(error)
            else:
                found.set_result(str(address))

    def look() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address, error = str(infos[0][4][0]), None
        except OSError as exc:
            address, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, address, error)

    threading.Thread(target=look, name=f"lookup {host}", daemon=True).start()
    return await found


async def _connect(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await connect(host, port, timeout)
    except (OSError, TimeoutError) as exc:
        raise SandboxUnreachable(
            f"cannot connect to sandbox supervisor at {host}:{port}: {exc or 'timed out'}"
        ) from exc


async def open_ssh_stream(
    host: str,
    port: int,
    secret: str,
    token: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    dial: Dial | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a supervisor and pass the handshake; the stream is then the caller's.

    Whatever the caller sends first chooses the mode (an SSH banner, ``EXEC1`` or ``OSRS1``).

    :raises SandboxUnreachable: the TCP connection failed.
    :raises HandshakeRejected: the supervisor answered ``ERR`` (or closed).
    """
    if dial is None:
        reader, writer = await _connect(host, port, connect_timeout)
    else:
        try:
            reader, writer = await asyncio.wait_for(dial(), connect_timeout * 2)
        except (OSError, TimeoutError, OpenShellError) as exc:
            why = exc.message if isinstance(exc, OpenShellError) else (str(exc) or "timed out")
            raise SandboxUnreachable(f"cannot reach the sandbox's supervisor: {why}") from exc
    try:
        await client_handshake(reader, writer, secret, token)
    except (HandshakeError, OSError) as exc:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if isinstance(exc, HandshakeError):
            raise
        raise HandshakeRejected(f"sandbox closed during the handshake: {exc}") from exc
    return reader, writer


async def exec_in_sandbox(
    host: str,
    port: int,
    secret: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    stdin: bytes | None = None,
    token: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    dial: Dial | None = None,
) -> AsyncIterator[ExecEvent]:
    """Run ``argv`` in a sandbox; yield its output chunks as they come, then its exit code.

    The last event is always ``ExecStream.EXIT``. Closing the generator early closes the connection,
    and the supervisor then kills the command.

    :param token: goes into the preface (upstream used a fresh UUIDv4 per exec; so do we).
    :raises SandboxUnreachable, HandshakeRejected, SandboxProtocolError:
    """
    request = ExecRequest(argv=list(argv), env=dict(env or {}), workdir=workdir, stdin=stdin)
    line = request.encode()
    reader, writer = await open_ssh_stream(
        host,
        port,
        secret,
        token or str(uuid.uuid4()),
        connect_timeout=connect_timeout,
        dial=dial,
    )
    try:
        writer.write(line)
        await writer.drain()
        while True:
            event = await read_frame(reader)
            if event is None:
                raise SandboxProtocolError("sandbox closed the exec stream before the exit code")
            yield event
            if event.kind is ExecStream.EXIT:
                return
    except OSError as exc:
        raise SandboxProtocolError(f"exec stream broke: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
