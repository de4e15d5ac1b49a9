"""ssh-proxy's ForwardTcp attempts (the ``supervisor`` transport) against a gRPC server on
127.0.0.1 that refuses them: what a refused attempt leaves behind. The next stream and the
reconnect are in ``test_sshproxy.py``; the whole exchange with a real gateway is in
``test_supervisor_transport.py``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from openshell_core.errors import OpenShellError
from openshell_core.grpc_api import Servicer, add_servicer_to_server
from openshell_core.host.sshproxy.forward import ForwardTunnel
from openshell_core.host.sshproxy.tunnel import GatewayTunnel
from openshell_core.pki import generate_pki, write_pki

#: Background tasks of an abandoned attempt get this long to end (they need no peer to).
SETTLE = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tunnel(tmp_path: Path) -> GatewayTunnel:
    write_pki(tmp_path / "pki", generate_pki())
    return GatewayTunnel(
        host="127.0.0.1",
        port=_free_port(),
        sandbox_id="sandbox",
        token="token",
        ca=tmp_path / "pki/ca.crt",
        cert=tmp_path / "pki/client.crt",
        key=tmp_path / "pki/client.key",
        connect_timeout=0.5,
    )


class _NotReady(Servicer):  # type: ignore[misc]
    """A gateway whose sandbox is never Ready: it reads the init frame, then refuses."""

    def ForwardTcp(self, frames: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        next(frames)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sandbox is not ready")
        yield from ()


@pytest.fixture
def not_ready_gateway(tunnel: GatewayTunnel) -> Iterator[None]:
    pki = tunnel.ca.parent
    server = grpc.server(ThreadPoolExecutor(2))
    add_servicer_to_server(_NotReady(), server)
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=tunnel.ca.read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{tunnel.port}", credentials)
    server.start()
    yield
    server.stop(None)


async def _attempts_then_pending(forward: ForwardTunnel, count: int) -> set[asyncio.Task[Any]]:
    """Make ``count`` attempts; the tasks they left that do not end within :data:`SETTLE`."""
    statuses = [(await forward.attempt()).status for _ in range(count)]
    assert statuses == [412] * count
    left = asyncio.all_tasks() - {asyncio.current_task()}
    if not left:
        return set()
    _, pending = await asyncio.wait(left, timeout=SETTLE)
    return pending


@pytest.mark.usefixtures("not_ready_gateway")
def test_a_refused_attempt_leaves_no_task_behind(tunnel: GatewayTunnel) -> None:
    """A task left pending is a leak, and asyncio prints it over the user's terminal when the
    proxy ends ("Task was destroyed but it is pending!")."""
    pending = asyncio.run(_attempts_then_pending(ForwardTunnel(tunnel), 3))
    assert not pending, f"tasks still pending after the attempts ended: {pending}"


def test_an_attempt_without_the_mtls_files_says_so_and_leaves_the_tunnel_usable(
    tunnel: GatewayTunnel,
) -> None:
    """The auto-bootstrap scenario deletes the host's files while a session is held: the resume
    must see a problem it retries (as over CONNECT), not crash ssh-proxy on a missing file."""
    kept = tunnel.ca.read_bytes()
    tunnel.ca.unlink()

    async def attempts() -> tuple[OpenShellError, int]:
        forward = ForwardTunnel(tunnel)
        with pytest.raises(OpenShellError) as missing:
            await forward.attempt()
        tunnel.ca.write_bytes(kept)  # written anew, as a bootstrap does
        return missing.value, (await forward.attempt()).status

    error, status = asyncio.run(attempts())
    assert f"cannot load the gateway's mTLS files ({tunnel.ca.parent})" in error.message
    assert error.hint == "`pytest-openshell gateway start` writes them again"
    assert status in (0, 502)  # nothing listens: an ordinary refusal, the files were read
