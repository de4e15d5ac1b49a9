"""The gateway's one published port: TLS with client certificates, then gRPC or an SSH tunnel.

Clients must present a certificate signed by the gateway's CA (the TLS handshake refuses the
others). After the handshake the first bytes choose the way:

- the HTTP/2 connection preface (``PRI * HTTP/2.0``): the bytes are relayed, in clear, to the
  internal gRPC server on a unix socket (mutual TLS already happened here);
- ``CONNECT ``: the request head is read and handed to the tunnel handler;
- anything else: the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from openshell_core.wire.relay import relay

log = logging.getLogger("openshell.server.listener")

_SNIFF: Final = 8
_HTTP2: Final = b"PRI * HT"
_CONNECT: Final = b"CONNECT "
#: Largest CONNECT request head accepted.
MAX_HEAD: Final = 8192
_FIRST_BYTES_TIMEOUT: Final = 30.0

TunnelHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


def server_tls_context(*, cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS for the gateway port: our server certificate, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    context.load_verify_locations(cafile=str(client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class GatewayListener:
    """Accepts TLS connections and routes each to gRPC or to the tunnel handler."""

    def __init__(
        self, context: ssl.SSLContext, *, grpc_socket: Path, tunnel: TunnelHandler
    ) -> None:
        self._context = context
        self._grpc_socket = grpc_socket
        self._tunnel = tunnel
        self._server: asyncio.Server | None = None
        #: each connection's task, with its writer (aborted at close)
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=self._context, ssl_handshake_timeout=15, limit=MAX_HEAD
        )
        log.info("listening on %s:%d (TLS, client certificates required)", host, port)

    async def close(self) -> None:
        """Stop accepting, and end the connections in flight.

        They are aborted, not shut down: a TLS shutdown waits for the peer's reply (each
        supervisor's session is one of these connections, and a stop took 1-2 s of that), and
        the peers dial again anyway.
        """
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            await self._route(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            if task is not None:
                self._connections.pop(task, None)
            _close(writer)

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readexactly(_SNIFF), _FIRST_BYTES_TIMEOUT)
        except TimeoutError:
            return
        if first == _HTTP2:
            await self._relay_grpc(first, reader, writer)
        elif first == _CONNECT:
            head = first + await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            await self._tunnel(reader, writer, head)

    async def _relay_grpc(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        inner_reader, inner_writer = await asyncio.open_unix_connection(str(self._grpc_socket))
        try:
            inner_writer.write(first)
            await relay(reader, writer, inner_reader, inner_writer)
        finally:
            _close(inner_writer)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
