"""The gateway's sandbox lifecycle and reconciliation rules, against an in-memory compute driver.

These are the pure-logic rules (what the gateway does when a container is missing, stopped, or its
workspace is gone; what each server-side fault changes). The same behaviours are exercised on a
real engine by the integration tests in ``test_server_gateway.py``.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.errors import NotFoundError, StateError
from openshell_core.faults import Fault
from openshell_core.server.compute import ContainerSpec, Observed
from openshell_core.server.config import ServerConfig
from openshell_core.server.model import Desired, Phase
from openshell_core.server.reconciler import Reconciler
from openshell_core.server.sandboxes import SandboxService
from openshell_core.server.store import Store, open_store

SECRET = "ab" * 32


def run(scenario: Coroutine[object, object, None]) -> None:
    asyncio.run(scenario)


@dataclass
class FakeDriver:
    """Containers and volumes in memory; every sandbox's supervisor is one local TCP port."""

    port: int
    node: str = "openshell-test"
    gateway: str = "test"
    containers: dict[str, str] = field(default_factory=dict)
    container_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    seeded: list[str] = field(default_factory=list)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    detached: set[str] = field(default_factory=set)

    def observe(self, sandbox_id: str) -> Observed:
        return Observed(
            sandbox_id,
            self.containers.get(sandbox_id),
            sandbox_id in self.volumes,
            self.container_labels.get(sandbox_id, {}),
            sandbox_id not in self.detached,
        )

    def list_owned(self, gateway_label: str | None = None) -> list[Observed]:
        owner = gateway_label or self.gateway
        return [
            self.observe(sandbox_id)
            for sandbox_id, found in self.container_labels.items()
            if found.get(labels.GATEWAY) == owner and sandbox_id in self.containers
        ]

    def provision(self, spec: ContainerSpec) -> None:
        if spec.workspace_volume:
            self.volumes.add(spec.sandbox_id)
            self.seeded.append(spec.sandbox_id)
        if spec.sandbox_id not in self.containers:
            self.envs[spec.sandbox_id] = dict(spec.environment)
            self.container_labels[spec.sandbox_id] = {
                labels.GATEWAY: self.gateway,
                labels.SANDBOX_ID: spec.sandbox_id,
                labels.NODE_NAME: self.node,
            }
        self.containers[spec.sandbox_id] = "running"

    def start(self, sandbox_id: str) -> None:
        if sandbox_id not in self.containers:
            raise NotFoundError("container", sandbox_id)
        self.detached.discard(sandbox_id)
        self.containers[sandbox_id] = "running"

    def stop(self, sandbox_id: str) -> None:
        if sandbox_id not in self.containers:
            raise NotFoundError("container", sandbox_id)
        self.containers[sandbox_id] = "exited"

    def remove(self, sandbox_id: str, *, workspace: bool) -> None:
        self.containers.pop(sandbox_id, None)
        if workspace:
            self.volumes.discard(sandbox_id)

    def address(self, sandbox_id: str) -> tuple[str, int]:
        return "127.0.0.1", self.port


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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "openshell.db", schema=1)
    yield opened
    opened.close()


def _config(*faults: Fault, node: str = "openshell-test", variant: str = "v1") -> ServerConfig:
    return ServerConfig(
        gateway_name="test",
        node_name=node,
        node_name_source="env",
        network="openshell-cluster-test",
        sandbox_image="openshell-sandbox:v1",
        docker_host="unix:///nonexistent",
        variant=variant,
        faults=frozenset(faults),
    )


def _service(store: Store, driver: FakeDriver, *faults: Fault) -> SandboxService:
    return SandboxService(store, driver, _config(*faults), secret=SECRET)


async def _created(service: SandboxService, name: str = "alpha") -> str:
    record = await service.create(
        workspace="default",
        name=name,
        image="",
        environment={"OPENSHELL_SSH_AUTHORIZED_KEYS": "ssh-ed25519 AAAA user"},
        labels={},
    )
    await service.idle()
    return record.id


def _phase(service: SandboxService, sandbox_id: str) -> Phase:
    record = service.get(sandbox_id)
    assert record is not None
    return record.phase


def test_a_created_sandbox_is_ready_once_its_supervisor_answers(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)

        sandbox_id = await _created(service)

        assert _phase(service, sandbox_id) is Phase.READY
        assert driver.containers[sandbox_id] == "running"
        assert sandbox_id in driver.volumes
        await service.close()

    run(scenario())


def test_the_container_environment_is_frozen_at_creation(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        env = driver.envs[sandbox_id]

        assert env["OPENSHELL_SSH_HANDSHAKE_SECRET"] == SECRET
        assert env["OPENSHELL_SANDBOX_ID"] == sandbox_id
        assert env["OPENSHELL_SANDBOX"] == "alpha"
        assert env["OPENSHELL_SSH_HANDSHAKE_SKEW_SECS"] == "300"
        assert env["OPENSHELL_SSH_LISTEN_ADDR"] == "0.0.0.0:2222"
        assert env["OPENSHELL_SSH_AUTHORIZED_KEYS"] == "ssh-ed25519 AAAA user"
        assert env["OPENSHELL_SSH_HOST_KEY"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

        del driver.containers[sandbox_id]
        service.secret = "cd" * 32  # what a regenerated secret would be
        await service.reconcile(sandbox_id)
        assert driver.envs[sandbox_id]["OPENSHELL_SSH_HANDSHAKE_SECRET"] == SECRET
        await service.close()

    run(scenario())


def test_a_vanished_container_is_made_again_on_the_same_workspace(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        del driver.containers[sandbox_id]
        await service.reconcile(sandbox_id)

        assert driver.containers[sandbox_id] == "running"
        assert sandbox_id in driver.volumes
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_container_stopped_out_of_band_is_started_again(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.containers[sandbox_id] = "exited"
        await service.reconcile(sandbox_id)

        assert driver.containers[sandbox_id] == "running"
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_running_sandbox_taken_off_the_network_is_attached_again(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.detached.add(sandbox_id)
        await service.reconcile(sandbox_id)

        assert driver.detached == set()
        assert _phase(service, sandbox_id) is Phase.READY
        record = service.get(sandbox_id)
        assert record is not None
        assert record.restart_count == 0
        await service.close()

    run(scenario())


def test_a_sandbox_the_user_stopped_stays_stopped(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        record = service.get(sandbox_id)
        assert record is not None

        await service.stop(record)
        await service.reconcile(sandbox_id)

        assert driver.containers[sandbox_id] == "exited"
        assert _phase(service, sandbox_id) is Phase.STOPPED
        await service.close()

    run(scenario())


def test_a_stopped_sandbox_can_be_started_again(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        record = service.get(sandbox_id)
        assert record is not None
        await service.stop(record)

        await service.start(record)
        await service.reconcile(sandbox_id)

        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_sandbox_whose_workspace_is_gone_fails_with_the_reason(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.volumes.discard(sandbox_id)
        del driver.containers[sandbox_id]
        await service.reconcile(sandbox_id)

        record = service.get(sandbox_id)
        assert record is not None
        assert record.phase is Phase.ERROR
        assert "is gone" in record.reason
        assert sandbox_id not in driver.containers  # not recreated on an empty workspace
        await service.close()

    run(scenario())


def test_a_failed_sandbox_refuses_to_start(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        driver.volumes.discard(sandbox_id)
        await service.reconcile(sandbox_id)
        record = service.get(sandbox_id)
        assert record is not None

        with pytest.raises(StateError, match="in error"):
            await service.start(record)
        await service.close()

    run(scenario())


def test_delete_removes_container_workspace_and_record(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        record = service.get(sandbox_id)
        assert record is not None

        await service.delete(record)

        assert sandbox_id not in driver.containers
        assert sandbox_id not in driver.volumes
        assert service.get(sandbox_id) is None
        await service.close()

    run(scenario())


def test_startup_adopts_known_containers_and_leaves_unknown_ones_alone(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        driver.containers["stranger"] = "running"
        driver.container_labels["stranger"] = {
            labels.GATEWAY: "test",
            labels.SANDBOX_ID: "stranger",
        }
        driver.containers[sandbox_id] = "exited"

        await Reconciler(service, interval=60).startup()

        assert driver.containers == {sandbox_id: "running", "stranger": "running"}
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_gateway_with_a_new_node_name_still_adopts_its_sandboxes(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port, node="old-node")
        sandbox_id = await _created(_service(store, driver))

        service = SandboxService(store, driver, _config(node="new-node"), secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id in driver.volumes
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


# -- server-side faults ---------------------------------------------------------------------


def test_fault_error_is_terminal_leaves_a_stopped_container_in_error(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver, Fault.ERROR_IS_TERMINAL)
        sandbox_id = await _created(service)

        driver.containers[sandbox_id] = "exited"
        await service.reconcile(sandbox_id)
        await service.reconcile(sandbox_id)

        assert driver.containers[sandbox_id] == "exited"
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


def test_fault_no_workspace_volume_makes_no_volume(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver, Fault.NO_WORKSPACE_VOLUME)

        sandbox_id = await _created(service)

        assert driver.volumes == set()
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_fault_reseed_workspace_seeds_again_when_the_sandbox_restarts(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        service = _service(store, driver, Fault.RESEED_WORKSPACE)
        sandbox_id = await _created(service)
        driver.containers[sandbox_id] = "exited"

        await service.reconcile(sandbox_id)

        assert driver.seeded == [sandbox_id, sandbox_id]
        await service.close()

    run(scenario())


def test_fault_container_id_hostname_purges_sandboxes_of_another_node(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port, node="old-container-id")
        sandbox_id = await _created(_service(store, driver))

        config = _config(Fault.CONTAINER_ID_HOSTNAME, node="new-container-id")
        service = SandboxService(store, driver, config, secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id not in driver.volumes
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


def test_fault_relabel_on_upgrade_purges_existing_sandboxes_in_v2(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        sandbox_id = await _created(_service(store, driver))

        config = _config(Fault.RELABEL_ON_UPGRADE, variant="v2")
        service = SandboxService(store, driver, config, secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id not in driver.containers
        assert service.list(None) == []
        await service.close()

    run(scenario())


def test_fault_relabel_on_upgrade_does_nothing_in_v1(store, supervisor_port):
    async def scenario() -> None:
        driver = FakeDriver(supervisor_port)
        sandbox_id = await _created(_service(store, driver))

        service = SandboxService(store, driver, _config(Fault.RELABEL_ON_UPGRADE), secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert [r.id for r in service.list(None)] == [sandbox_id]
        assert service.get(sandbox_id).desired is Desired.RUNNING  # type: ignore[union-attr]
        await service.close()

    run(scenario())
