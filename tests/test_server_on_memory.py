"""The whole gateway process (store, secrets, PKI, API, TLS port, reconciler) on the compute driver
its configuration names, here the in-memory one: nothing in the gateway assumes Docker."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from openshell_core import labels
from openshell_core.grpc_api import pb, phase_name, stub, workspace_selector
from openshell_core.server.__main__ import Gateway
from openshell_core.server.compute import Ownership, RuntimeState
from openshell_core.server.compute_memory import InMemoryComputeDriver, InMemorySettings
from openshell_core.server.config import ServerConfig

DEADLINE = 20.0


@pytest.fixture
def supervisor_port() -> Iterator[int]:
    """A local port that accepts connections, standing in for every sandbox's supervisor."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_gateway_runs_its_sandboxes_on_the_configured_compute_driver(
    tmp_path: Path, supervisor_port: int
) -> None:
    driver = InMemoryComputeDriver(Ownership("unset", "unset"), ("127.0.0.1", supervisor_port))
    config = ServerConfig(
        gateway_name="memory-test",
        node_name="openshell-memory-test",
        node_name_source="env",
        sandbox_image="openshell-sandbox:v1",
        compute=InMemorySettings(driver),
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        listen_host="127.0.0.1",
        listen_port=_free_port(),
        reconcile_interval=0.2,
    )
    scope = workspace_selector("default")

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{config.grpc_socket}") as channel:
                api = stub(channel)
                info = await api.GetGatewayInfo(pb.GetGatewayInfoRequest())
                assert [found.name for found in info.compute_drivers] == ["memory"]

                await api.CreateSandbox(
                    pb.CreateSandboxRequest(
                        workspace_scope=scope, name="alpha", spec=pb.SandboxSpec()
                    )
                )
                loop = asyncio.get_running_loop()
                deadline = loop.time() + DEADLINE
                while True:
                    got = await api.GetSandbox(
                        pb.GetSandboxRequest(workspace_scope=scope, name="alpha")
                    )
                    phase = phase_name(int(got.sandbox.status.phase))
                    if phase == "READY":
                        break
                    assert phase == "PROVISIONING", f"sandbox went to {phase}"
                    assert loop.time() < deadline, "the sandbox did not become READY"
                    await asyncio.sleep(0.05)
        finally:
            await gateway.stop()

        (sandbox_id,) = driver.runtimes
        observed = driver.observe(sandbox_id)
        assert observed.state is RuntimeState.RUNNING and observed.workspace
        assert observed.labels[labels.GATEWAY] == "memory-test"
        assert observed.labels[labels.NODE_NAME] == "openshell-memory-test"
        assert driver.closed

    asyncio.run(scenario())
