"""The gateway's TLS listener, in process: what its close does to the connections in flight."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from openshell_core.pki import generate_pki, write_pki
from openshell_core.server.listener import GatewayListener, server_tls_context

#: A close that waits for its peers' TLS shutdown takes at least 2 s (its own bound); one that
#: does not is over in milliseconds. The deadline sits well apart from both.
CLOSE_DEADLINE = 1.5


def test_a_close_ends_a_connection_whose_peer_never_answers_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    """At a stop every supervisor's session is such a connection (relayed to gRPC): a TLS shutdown waits for a
    reply that a peer busy elsewhere never sends, and a gateway stop took 1-2 s of that."""
    pki = tmp_path / "pki"
    write_pki(pki, generate_pki())
    reached_grpc = asyncio.Event()

    async def grpc_stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached_grpc.set()
        try:
            await reader.read()  # a session in use: it ends when the listener lets go of it
        finally:
            writer.close()

    async def no_tunnel(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        raise AssertionError("only the gRPC way is taken here")

    async def scenario() -> None:
        grpc_server = await asyncio.start_unix_server(grpc_stand_in, str(tmp_path / "grpc.sock"))
        listener = GatewayListener(
            server_tls_context(
                cert=pki / "server.crt", key=pki / "server.key", client_ca=pki / "ca.crt"
            ),
            grpc_socket=tmp_path / "grpc.sock",
            tunnel=no_tunnel,
        )
        await listener.start("127.0.0.1", 0)
        port = listener._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        client.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))

        def connect() -> ssl.SSLSocket:
            # A blocking socket outside the loop: it answers nothing unless it is read.
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = client.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return tls

        peer = await asyncio.to_thread(connect)
        try:
            await asyncio.wait_for(reached_grpc.wait(), 10)
            await asyncio.wait_for(listener.close(), CLOSE_DEADLINE)
        finally:
            peer.close()
            grpc_server.close()
            await grpc_server.wait_closed()

    asyncio.run(scenario())
