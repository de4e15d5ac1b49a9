"""The supervisor's dial-out (``supervisor`` transport), against an in-process gRPC gateway: how
soon it dials again, and that a dial that gets no answer is given up on."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest

from openshell_core.grpc_api import Servicer, add_servicer_to_server, pb
from openshell_core.pki import generate_pki, write_pki
from openshell_core.sandbox.dialout import (
    AWAY_BACKOFF,
    FIRST_BACKOFF,
    LONG_AWAY,
    MAX_BACKOFF,
    DialOut,
    DialOutConfig,
    next_pause,
)


def test_a_gateway_away_less_than_a_minute_is_dialled_at_least_every_second() -> None:
    pauses, backoff = [], FIRST_BACKOFF
    for _ in range(20):
        pauses.append(backoff)
        backoff = next_pause(backoff, away=30.0)
    assert pauses[0] == FIRST_BACKOFF
    assert max(pauses) == MAX_BACKOFF == 1.0
    assert pauses == sorted(pauses)


def test_a_gateway_away_for_long_is_dialled_less_often_but_within_ten_seconds() -> None:
    backoff = MAX_BACKOFF
    for _ in range(20):
        backoff = next_pause(backoff, away=LONG_AWAY)
    assert backoff == AWAY_BACKOFF == 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_dial_the_gateway_does_not_answer_is_given_up_and_made_again(tmp_path: Path) -> None:
    """A dial made while the sandbox was off the network waited 10 s for its name lookup after
    the network was back; one that gets no session in time is dropped for a new one."""
    write_pki(tmp_path / "pki", generate_pki())
    pki = tmp_path / "pki"
    port = _free_port()
    hellos: list[int] = []

    class SilentOnce(Servicer):  # type: ignore[misc]
        async def ConnectSupervisor(self, requests: Any, context: Any) -> Any:
            first = await anext(aiter(requests))
            hellos.append(first.hello.connection_epoch)
            if len(hellos) == 1:
                await asyncio.sleep(3600)  # a gateway that never answers this dial
            yield pb.GatewayMessage(session_accepted=pb.SessionAccepted(session_id="s"))
            await asyncio.sleep(3600)

    async def scenario() -> float:
        server = grpc.aio.server()
        add_servicer_to_server(SilentOnce(), server)
        credentials = grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
            root_certificates=(pki / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
        await server.start()
        config = DialOutConfig(
            sandbox_id="sbx-1",
            endpoint=f"127.0.0.1:{port}",
            token="tok",
            ca=(pki / "ca.crt").read_bytes(),
            cert=(pki / "client.crt").read_bytes(),
            key=(pki / "client.key").read_bytes(),
            token_cache=tmp_path / "token",
        )
        dialout = DialOut(config, supervisor=None)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        started = loop.time()
        running = asyncio.create_task(dialout.run())
        try:
            while len(hellos) < 2:
                await asyncio.sleep(0.05)
            return loop.time() - started
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await server.stop(grace=None)

    took = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert hellos == [1, 2]
    assert took < 5


@pytest.fixture(autouse=True)
def _quiet_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")


def test_a_name_lookup_that_gets_no_answer_ends_the_dial_within_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Off the network, or while the gateway's container is stopped, the engine's DNS may never
    answer: gRPC's own bound is 2 minutes (14 s seen here), which a sandbox waits out after the
    gateway is back."""
    write_pki(tmp_path / "pki", generate_pki())
    pki = tmp_path / "pki"
    silent_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_dns.bind(("127.0.0.1", 0))
    dns_port = silent_dns.getsockname()[1]
    config = DialOutConfig(
        sandbox_id="sbx-1",
        endpoint=f"dns://127.0.0.1:{dns_port}/gateway.invalid:30051",
        token="tok",
        ca=(pki / "ca.crt").read_bytes(),
        cert=(pki / "client.crt").read_bytes(),
        key=(pki / "client.key").read_bytes(),
        token_cache=tmp_path / "token",
    )

    async def scenario() -> None:
        running = asyncio.create_task(DialOut(config, supervisor=None).run())  # type: ignore[arg-type]
        try:
            while "lost" not in caplog.text:
                await asyncio.sleep(0.05)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    caplog.set_level("WARNING", logger="openshell.sandbox.dialout")
    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        silent_dns.close()
    assert "errors resolving gateway.invalid" in caplog.text
