"""Sandboxes after the Docker daemon goes away: better than upstream, they come back Ready by
themselves (never stuck in Error), and a sandbox its user stopped stays stopped.

Runs on a throw-away private engine of its own: the daemon is restarted and then crashed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from server_support import GatewayUnderTest, lab_run, wait_for

from openshell_core.engine import Engine, PrivateEngine
from openshell_core.errors import OpenShellError
from openshell_core.gateway.readiness import wait_healthy
from openshell_core.images import ensure_images


@pytest.fixture(scope="module")
def lab_engine(lab_engine_factory: Callable[[], PrivateEngine]) -> Iterator[Engine]:
    private = lab_engine_factory()
    private.start()
    handle = private.connect()
    ensure_images(handle)
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def gateway(
    lab_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayUnderTest]:
    with lab_run(lab_engine) as run_id:
        lab = GatewayUnderTest(
            lab_engine, f"dmn{run_id[:8]}", run_id, tmp_path_factory.mktemp("cfg")
        )
        lab.deploy()
        with lab.client() as client:
            client.create_sandbox("busy")
            client.wait_ready("busy", timeout=120)
            client.exec("busy", ["sh", "-c", "echo kept > /sandbox/marker"])
            client.create_sandbox("parked")
            client.wait_ready("parked", timeout=120)
            client.stop_sandbox("parked")
        yield lab


def _answers(gateway: GatewayUnderTest) -> bool:
    try:
        with gateway.client() as client:
            client.health()
    except OpenShellError:
        return False
    return True


def _comes_back(gateway: GatewayUnderTest) -> None:
    """Nothing is done to recover: the gateway and its sandboxes restart by themselves."""
    wait_for(lambda: gateway.engine.inspect_container(gateway.container), what="the gateway")
    wait_healthy(gateway.engine, gateway.container, timeout=120)
    wait_for(lambda: _answers(gateway), what="the gateway API")
    with gateway.client() as client:
        assert client.wait_ready("busy", timeout=120).phase == "READY"
        assert client.exec("busy", ["cat", "/sandbox/marker"]).stdout == b"kept\n"
        assert client.get_sandbox("parked").phase == "STOPPED"


def test_sandboxes_come_back_ready_after_a_daemon_restart(gateway: GatewayUnderTest):
    gateway.engine.restart_daemon()
    _comes_back(gateway)


def test_sandboxes_come_back_ready_after_a_daemon_crash(gateway: GatewayUnderTest):
    gateway.engine.crash_daemon()
    _comes_back(gateway)


def test_a_stopped_sandbox_can_be_started_after_the_daemon_came_back(gateway: GatewayUnderTest):
    with gateway.client() as client:
        client.start_sandbox("parked")
        assert client.wait_ready("parked", timeout=120).phase == "READY"
