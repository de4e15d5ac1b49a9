"""ssh-proxy's way through a ``supervisor`` gateway: the ``ForwardTcp`` stream, not CONNECT.

The first frame is ``TcpForwardInit`` (the sandbox, target ``ssh``, the session token); data
frames follow both ways. The gateway answers with initial metadata once the sandbox's end is
there, or ends the call with a status. Statuses are read as the CONNECT tunnel's: a sandbox not
Ready yet (``FAILED_PRECONDITION``, as 412) is retried the same way, the others end ssh-proxy with
the same messages and exit codes (:class:`~.tunnel.ConnectFailed`). The stream is handed on as a
pair of asyncio streams (one end of a socket pair, the other pumped to the call), so the plain
and the resumable (OSRS1) relays run over it unchanged.

This module loads gRPC; ssh-proxy imports it only for a gateway that speaks ``supervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from openshell_core.grpc_api import pb, stub
from openshell_core.host.sshproxy.tunnel import (
    Attempt,
    GatewayTunnel,
    Streams,
    connect_with_retry,
    opened,
)
from openshell_core.wire import contract

CHUNK: Final = 64 * 1024
#: gRPC statuses of a refused ForwardTcp, as the CONNECT statuses they mean.
_STATUS: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 502,
}


@dataclass
class ForwardTunnel:
    """Opens ForwardTcp streams to one sandbox, with the mutual TLS files of a
    :class:`GatewayTunnel` (same gateway, sandbox and token)."""

    tunnel: GatewayTunnel
    _channel: Any = field(default=None, repr=False)
    _pumps: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def sandbox_id(self) -> str:
        return self.tunnel.sandbox_id

    @property
    def token(self) -> str:
        return self.tunnel.token

    def _stub(self) -> Any:
        if self._channel is None:
            ca, key, cert = self.tunnel.mtls_pems()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            target = f"{self.tunnel.host}:{self.tunnel.port}"
            self._channel = grpc.aio.secure_channel(target, credentials)
        return stub(self._channel)

    async def attempt(self) -> Attempt:
        """One ForwardTcp call: 200 and the streams once the gateway opened it, else the status
        its refusal stands for."""
        result: Attempt | None = None
        try:
            result = await self._attempt()
        finally:
            # also when a resume gave up on this attempt (cancelled it) as too slow
            if result is None or result.status != 200:
                await self._drop_broken_channel()
        return result

    async def _drop_broken_channel(self) -> None:
        """Forget a channel that is not connected after a failed attempt: gRPC would connect it
        again only after its own reconnect backoff (1 s, growing 1.6 times to 2 min), so a
        gateway back from a restart would wait that long for a resuming session. The next
        attempt makes a new channel, which connects at once. (A channel that is not READY
        carries no live stream of ours.)"""
        channel = self._channel
        if channel is None:
            return
        if channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY:
            return
        self._channel = None
        with contextlib.suppress(Exception):
            await channel.close()

    async def _attempt(self) -> Attempt:
        # Our end of the socket pair is an asyncio stream, never a bare socket under
        # loop.sock_recv: a refused call leaves its request iterator waiting on that end, and a
        # socket closed under a waiting sock_recv stays registered with the event loop, so the
        # next socket given the same descriptor number never hears of its data (a resumed
        # session waited 15 s for a reply that had arrived). Closing a stream's transport
        # unregisters it and ends the iterator.
        forward = self._stub().ForwardTcp  # first: it may raise (the mTLS files are gone)
        ours, theirs = socket.socketpair()
        try:
            reader, writer = await asyncio.open_connection(sock=ours, limit=CHUNK)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        call = forward(_frames(self.tunnel, reader))
        try:
            metadata = await asyncio.wait_for(
                call.initial_metadata(), self.tunnel.connect_timeout * 3
            )
            if not any(key == contract.FORWARD_OPEN_METADATA for key, _ in metadata or ()):
                code = await call.code()
                details = await call.details()
                writer.close()
                theirs.close()
                return Attempt(_STATUS.get(code, 0), reason=str(details or code.name))
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            call.cancel()
            writer.close()
            theirs.close()
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "timed out"
            return Attempt(0, reason=str(why))
        except BaseException:
            call.cancel()
            writer.close()
            theirs.close()
            raise
        pump = asyncio.create_task(_responses_to(call, writer))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        try:
            return Attempt(200, await asyncio.open_connection(sock=theirs, limit=65536))
        except BaseException:
            call.cancel()
            theirs.close()
            raise

    async def open(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Streams:
        """An open stream (after the not-Ready retries).

        :raises ConnectFailed: the gateway refused.
        """
        return await connect_with_retry(self.attempt, clock=clock, sleep=sleep)

    async def open_once(self) -> Streams:
        """:raises ConnectFailed: any answer but 200 (412 too: the caller retries)."""
        return opened(await self.attempt())


async def _frames(
    tunnel: GatewayTunnel, ours: asyncio.StreamReader
) -> AsyncIterator[pb.TcpForwardFrame]:
    """The init frame, then what ssh-proxy writes into its end of the socket pair."""
    init = pb.TcpForwardInit(sandbox=tunnel.sandbox_id, authorization_token=tunnel.token)
    init.ssh.SetInParent()
    yield pb.TcpForwardFrame(init=init)
    while True:
        try:
            data = await ours.read(CHUNK)
        except OSError:
            return
        if not data:
            return
        yield pb.TcpForwardFrame(data=data)


async def _responses_to(call: Any, ours: asyncio.StreamWriter) -> None:
    """The gateway's data frames into ssh-proxy's end; a half-close when they end."""
    try:
        async for frame in call:
            if frame.data:
                ours.write(frame.data)
                await ours.drain()
    except (grpc.aio.AioRpcError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if ours.can_write_eof():
                ours.write_eof()
        call.cancel()
        ours.close()  # the call is over: what ssh-proxy still writes has nowhere to go
