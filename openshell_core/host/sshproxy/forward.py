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
    _pumps: set[asyncio.Future[Any]] = field(default_factory=set, repr=False)

    @property
    def sandbox_id(self) -> str:
        return self.tunnel.sandbox_id

    @property
    def token(self) -> str:
        return self.tunnel.token

    def _stub(self) -> Any:
        if self._channel is None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.tunnel.ca.read_bytes(),
                private_key=self.tunnel.key.read_bytes(),
                certificate_chain=self.tunnel.cert.read_bytes(),
            )
            target = f"{self.tunnel.host}:{self.tunnel.port}"
            self._channel = grpc.aio.secure_channel(target, credentials)
        return stub(self._channel)

    async def attempt(self) -> Attempt:
        """One ForwardTcp call: 200 and the streams once the gateway opened it, else the status
        its refusal stands for."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        call = self._stub().ForwardTcp(_frames(self.tunnel, ours))
        try:
            metadata = await asyncio.wait_for(
                call.initial_metadata(), self.tunnel.connect_timeout * 3
            )
            if not any(key == contract.FORWARD_OPEN_METADATA for key, _ in metadata or ()):
                code = await call.code()
                details = await call.details()
                self._abandon(call, theirs, reachable=code is not grpc.StatusCode.UNAVAILABLE)
                return Attempt(_STATUS.get(code, 0), reason=str(details or code.name))
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            self._abandon(call, theirs, reachable=False)
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "timed out"
            return Attempt(0, reason=str(why))
        except BaseException:
            self._abandon(call, theirs, reachable=False)
            raise
        self._keep(asyncio.create_task(_responses_to(call, ours)))
        return Attempt(200, await asyncio.open_connection(sock=theirs, limit=65536))

    def _abandon(self, call: Any, theirs: socket.socket, *, reachable: bool) -> None:
        """End a call that did not open. Closing our side of the socket pair ends its request
        frames (:func:`_frames` reads end-of-file and closes the rest itself: closing that end
        under its pending read would leave gRPC's request task pending forever). An unreachable
        gateway also costs the channel: gRPC would hold a failed channel in reconnect backoff
        (seconds, growing) and fail the next attempts without dialling, so a gateway that is
        back would be seen only when the backoff ends; a new channel dials at once."""
        theirs.close()
        call.cancel()
        if not reachable and self._channel is not None:
            channel, self._channel = self._channel, None
            self._keep(asyncio.ensure_future(channel.close()))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a background task until it is done (the loop keeps only weak references)."""
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

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


async def _frames(tunnel: GatewayTunnel, ours: socket.socket) -> AsyncIterator[pb.TcpForwardFrame]:
    """The init frame, then what ssh-proxy writes into its end of the socket pair, until that end
    is closed. This generator owns ``ours`` and closes it as it ends."""
    loop = asyncio.get_running_loop()
    try:
        init = pb.TcpForwardInit(sandbox=tunnel.sandbox_id, authorization_token=tunnel.token)
        init.ssh.SetInParent()
        yield pb.TcpForwardFrame(init=init)
        while True:
            try:
                data = await loop.sock_recv(ours, CHUNK)
            except OSError:
                return
            if not data:
                return
            yield pb.TcpForwardFrame(data=data)
    finally:
        # After the loop has dropped its watch of the socket (a cancelled read unregisters in a
        # callback already queued), not before.
        loop.call_soon(ours.close)


async def _responses_to(call: Any, ours: socket.socket) -> None:
    """The gateway's data frames into ssh-proxy's end; a half-close when they end."""
    loop = asyncio.get_running_loop()
    try:
        async for frame in call:
            if frame.data:
                await loop.sock_sendall(ours, frame.data)
    except (grpc.aio.AioRpcError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_WR)
        # Ending the call ends its request frames too (:func:`_frames` closes ``ours``).
        call.cancel()
