"""The gateway's sandbox lifecycle and reconciliation rules, against the in-memory compute driver.

These are the pure-logic rules (what the gateway does when a sandbox's runtime is missing,
stopped or out of reach, or its workspace is gone; what each server-side fault changes). The same
behaviours are exercised on a real engine by the integration tests in ``test_server_gateway.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core.errors import StateError
from openshell_core.faults import Fault
from openshell_core.server.compute import Observation, Ownership, RuntimeState, SandboxSpec
from openshell_core.server.compute_memory import InMemoryComputeDriver, InMemorySettings
from openshell_core.server.config import ServerConfig
from openshell_core.server.model import Desired, Phase
from openshell_core.server.reconciler import Reconciler
from openshell_core.server.sandboxes import SUPERVISOR_WAIT, SandboxService
from openshell_core.server.store import Store, open_store

SECRET = "ab" * 32
RUNNING, STOPPED = RuntimeState.RUNNING, RuntimeState.STOPPED


def run(scenario: Coroutine[object, object, None]) -> None:
    asyncio.run(scenario)


def memory_driver(port: int, node: str = "openshell-test") -> InMemoryComputeDriver:
    """Sandboxes in memory, labelled as gateway ``test``'s; every supervisor is ``port``."""
    return InMemoryComputeDriver(Ownership("test", node), supervisor=("127.0.0.1", port))


def _states(driver: InMemoryComputeDriver) -> dict[str, RuntimeState]:
    return {sandbox_id: runtime.state for sandbox_id, runtime in driver.runtimes.items()}


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
        sandbox_image="openshell-sandbox:v1",
        compute=InMemorySettings(),
        variant=variant,
        faults=frozenset(faults),
    )


def _service(store: Store, driver: InMemoryComputeDriver, *faults: Fault) -> SandboxService:
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
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)

        sandbox_id = await _created(service)

        assert _phase(service, sandbox_id) is Phase.READY
        assert _states(driver) == {sandbox_id: RUNNING}
        assert driver.workspaces[sandbox_id].seeded == 1
        await service.close()

    run(scenario())


def test_the_sandbox_environment_is_frozen_at_creation(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        env = driver.runtimes[sandbox_id].spec.environment

        assert env["OPENSHELL_SSH_HANDSHAKE_SECRET"] == SECRET
        assert env["OPENSHELL_SANDBOX_ID"] == sandbox_id
        assert env["OPENSHELL_SANDBOX"] == "alpha"
        assert env["OPENSHELL_SSH_HANDSHAKE_SKEW_SECS"] == "300"
        assert env["OPENSHELL_SSH_LISTEN_ADDR"] == "0.0.0.0:2222"
        assert env["OPENSHELL_SSH_AUTHORIZED_KEYS"] == "ssh-ed25519 AAAA user"
        assert env["OPENSHELL_SSH_HOST_KEY"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

        driver.vanish(sandbox_id)
        service.secret = "cd" * 32  # what a regenerated secret would be
        await service.reconcile(sandbox_id)
        assert (
            driver.runtimes[sandbox_id].spec.environment["OPENSHELL_SSH_HANDSHAKE_SECRET"] == SECRET
        )
        await service.close()

    run(scenario())


def test_a_vanished_runtime_is_made_again_on_the_same_workspace(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.vanish(sandbox_id)
        await service.reconcile(sandbox_id)

        assert _states(driver) == {sandbox_id: RUNNING}
        assert driver.workspaces[sandbox_id].seeded == 1  # the same workspace, not seeded again
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_sandbox_stopped_out_of_band_is_started_again(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.halt(sandbox_id)
        await service.reconcile(sandbox_id)

        assert _states(driver) == {sandbox_id: RUNNING}
        assert driver.runtimes[sandbox_id].starts == 2
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_running_sandbox_out_of_reach_is_adopted_again_without_a_restart(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.cut_off(sandbox_id)
        await service.reconcile(sandbox_id)

        assert driver.observe(sandbox_id).reachable
        assert driver.runtimes[sandbox_id].starts == 1
        assert _phase(service, sandbox_id) is Phase.READY
        record = service.get(sandbox_id)
        assert record is not None
        assert record.restart_count == 0
        await service.close()

    run(scenario())


def test_a_sandbox_the_user_stopped_stays_stopped(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        record = service.get(sandbox_id)
        assert record is not None

        await service.stop(record)
        await service.reconcile(sandbox_id)

        assert _states(driver) == {sandbox_id: STOPPED}
        assert _phase(service, sandbox_id) is Phase.STOPPED
        await service.close()

    run(scenario())


def test_a_stopped_sandbox_can_be_started_again(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
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
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.lose_workspace(sandbox_id)
        driver.vanish(sandbox_id)
        await service.reconcile(sandbox_id)

        record = service.get(sandbox_id)
        assert record is not None
        assert record.phase is Phase.ERROR
        assert record.reason == (
            f"workspace in-memory workspace {sandbox_id} is gone; the sandbox's files cannot be "
            "recovered"
        )
        assert sandbox_id not in driver.runtimes  # not recreated on an empty workspace
        await service.close()

    run(scenario())


def test_a_sandbox_whose_workspace_is_gone_accepts_a_start_and_fails_again_with_the_reason(
    store, supervisor_port
):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        driver.lose_workspace(sandbox_id)
        await service.reconcile(sandbox_id)
        record = service.get(sandbox_id)
        assert record is not None and record.phase is Phase.ERROR
        reason = record.reason

        await service.start(record)
        await service.idle()

        after = service.get(sandbox_id)
        assert after is not None
        assert (after.phase, after.reason) == (Phase.ERROR, reason)
        assert sandbox_id not in driver.workspaces  # no fresh, empty workspace made
        await service.close()

    run(scenario())


async def _failed(service: SandboxService, driver: InMemoryComputeDriver) -> str:
    """A sandbox whose runtime kept failing, in ERROR."""
    sandbox_id = await _created(service)
    driver.crash_loop(sandbox_id, "exited with code 1 after 3 restarts")
    await service.reconcile(sandbox_id)
    assert _phase(service, sandbox_id) is Phase.ERROR
    return sandbox_id


def test_a_sandbox_whose_runtime_keeps_failing_goes_to_error_keeping_its_workspace(
    store, supervisor_port
):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        driver.crash_loop(sandbox_id, "exited with code 1 after 3 restarts")
        await service.reconcile(sandbox_id)

        record = service.get(sandbox_id)
        assert record is not None
        assert record.phase is Phase.ERROR
        assert record.reason == (
            "its runtime keeps failing (exited with code 1 after 3 restarts); start the sandbox "
            "to run it on a new runtime with the same workspace"
        )
        assert sandbox_id not in driver.runtimes  # nothing keeps retrying it
        assert driver.workspaces[sandbox_id].seeded == 1
        await service.close()

    run(scenario())


def test_the_periodic_pass_leaves_a_sandbox_in_error_for_its_user(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _failed(service, driver)

        await Reconciler(service, interval=60).reconcile_all()

        assert _phase(service, sandbox_id) is Phase.ERROR
        assert sandbox_id not in driver.runtimes
        await service.close()

    run(scenario())


@dataclass
class _WatchedMemoryDriver(InMemoryComputeDriver):
    """The in-memory driver with a watch (:class:`WatchesRuntimes`): a halt is reported as it
    happens; the test is told when the watch begins and ends, and when a runtime is started."""

    watching: threading.Event = field(default_factory=threading.Event)
    watch_ended: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    _changed: list[Callable[[], None]] = field(default_factory=list)

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        self._changed.append(changed)
        self.watching.set()
        stop.wait()
        self.watch_ended.set()

    def halt(self, sandbox_id: str, detail: str = "exited") -> None:
        super().halt(sandbox_id, detail)
        for changed in self._changed:
            changed()

    def start(self, sandbox_id: str) -> None:
        super().start(sandbox_id)
        self.started.set()


def test_a_runtime_change_the_driver_reports_is_acted_on_before_the_next_periodic_pass(
    store, supervisor_port
):
    async def scenario() -> None:
        driver = _WatchedMemoryDriver(
            Ownership("test", "openshell-test"), supervisor=("127.0.0.1", supervisor_port)
        )
        service = _service(store, driver)
        sandbox_id = await _created(service)
        passes = asyncio.create_task(Reconciler(service, interval=3600).run())
        try:
            assert await asyncio.to_thread(driver.watching.wait, 10), "no watch was started"
            driver.halt(sandbox_id)
            assert await asyncio.to_thread(driver.started.wait, 10), (
                "the runtime the driver reported halted was not started again within 10 s (the "
                "next periodic pass is an hour away)"
            )
        finally:
            passes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await passes
        assert driver.runtimes[sandbox_id].starts == 2
        assert await asyncio.to_thread(driver.watch_ended.wait, 10), "the watch outlived the run"
        await service.close()

    run(scenario())


def test_a_sandbox_in_error_can_be_stopped_and_stays_stopped(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _failed(service, driver)
        record = service.get(sandbox_id)
        assert record is not None

        stopped = await service.stop(record)
        await service.reconcile(sandbox_id)

        assert stopped.phase is Phase.STOPPED
        assert _phase(service, sandbox_id) is Phase.STOPPED
        assert sandbox_id not in driver.runtimes
        await service.close()

    run(scenario())


def test_a_sandbox_in_error_starts_again_on_a_new_runtime_with_its_workspace(
    store, supervisor_port
):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _failed(service, driver)
        record = service.get(sandbox_id)
        assert record is not None

        started = await service.start(record)
        await service.idle()

        assert started.phase is Phase.PROVISIONING
        assert _phase(service, sandbox_id) is Phase.READY
        assert _states(driver) == {sandbox_id: RUNNING}
        assert driver.workspaces[sandbox_id].seeded == 1  # the same workspace, not seeded again
        await service.close()

    run(scenario())


def test_a_sandbox_in_error_stopped_then_started_comes_back(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _failed(service, driver)
        record = service.get(sandbox_id)
        assert record is not None

        await service.stop(record)
        await service.start(record)
        await service.idle()

        assert _phase(service, sandbox_id) is Phase.READY
        assert driver.workspaces[sandbox_id].seeded == 1
        await service.close()

    run(scenario())


def test_a_sandbox_in_error_can_be_deleted(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _failed(service, driver)
        record = service.get(sandbox_id)
        assert record is not None

        await service.delete(record)

        assert service.get(sandbox_id) is None
        assert sandbox_id not in driver.workspaces
        await service.close()

    run(scenario())


def test_the_gateways_start_gives_a_sandbox_in_error_another_attempt(store, supervisor_port):
    """Upstream #2179: after an engine restart the resume sweep skipped sandboxes in Error."""

    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        sandbox_id = await _failed(_service(store, driver), driver)

        service = _service(store, driver)  # the gateway starts again
        await Reconciler(service, interval=60).startup()

        assert _phase(service, sandbox_id) is Phase.READY
        assert driver.workspaces[sandbox_id].seeded == 1
        await service.close()

    run(scenario())


def test_an_error_the_gateways_start_cannot_mend_keeps_its_reason(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        first = _service(store, driver)
        sandbox_id = await _created(first)
        driver.lose_workspace(sandbox_id)
        await first.reconcile(sandbox_id)
        before = first.get(sandbox_id)
        assert before is not None and before.phase is Phase.ERROR

        service = _service(store, driver)
        await Reconciler(service, interval=60).startup()

        after = service.get(sandbox_id)
        assert after is not None
        assert (after.phase, after.reason) == (Phase.ERROR, before.reason)
        await service.close()

    run(scenario())


def test_the_sandboxs_command_is_frozen_into_its_runtime_and_reported(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        record = await service.create(
            workspace="default",
            name="alpha",
            image="",
            environment={},
            labels={},
            command=["sh", "-c", "echo started >> /sandbox/starts.log"],
        )
        await service.idle()

        env = driver.runtimes[record.id].spec.environment
        assert json.loads(env["OPENSHELL_SANDBOX_COMMAND"]) == [
            "sh",
            "-c",
            "echo started >> /sandbox/starts.log",
        ]
        stored = service.get(record.id)
        assert stored is not None
        assert stored.command == ("sh", "-c", "echo started >> /sandbox/starts.log")
        driver.vanish(record.id)
        await service.reconcile(record.id)  # made again: the same command
        assert (
            driver.runtimes[record.id].spec.environment["OPENSHELL_SANDBOX_COMMAND"]
            == env["OPENSHELL_SANDBOX_COMMAND"]
        )
        await service.close()

    run(scenario())


def test_a_sandbox_created_without_a_command_has_none(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)

        assert "OPENSHELL_SANDBOX_COMMAND" not in driver.runtimes[sandbox_id].spec.environment
        assert service.get(sandbox_id).command == ()  # type: ignore[union-attr]
        await service.close()

    run(scenario())


def test_delete_removes_runtime_workspace_and_record(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        record = service.get(sandbox_id)
        assert record is not None

        await service.delete(record)

        assert sandbox_id not in driver.runtimes
        assert sandbox_id not in driver.workspaces
        assert service.get(sandbox_id) is None
        await service.close()

    run(scenario())


def test_startup_adopts_known_sandboxes_and_leaves_unknown_ones_alone(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver)
        sandbox_id = await _created(service)
        driver.plant("stranger", gateway_label="test", node_name="openshell-test")
        driver.halt(sandbox_id)

        await Reconciler(service, interval=60).startup()

        assert _states(driver) == {sandbox_id: RUNNING, "stranger": RUNNING}
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_a_gateway_with_a_new_node_name_still_adopts_its_sandboxes(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port, node="old-node")
        sandbox_id = await _created(_service(store, driver))

        driver.ownership = Ownership("test", "new-node")  # what the new gateway labels with
        service = SandboxService(store, driver, _config(node="new-node"), secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id in driver.workspaces
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


# -- server-side faults ---------------------------------------------------------------------


def test_fault_error_is_terminal_leaves_a_stopped_sandbox_in_error(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver, Fault.ERROR_IS_TERMINAL)
        sandbox_id = await _created(service)

        driver.halt(sandbox_id)
        await service.reconcile(sandbox_id)
        await service.reconcile(sandbox_id)

        assert _states(driver) == {sandbox_id: STOPPED}
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


def test_fault_error_refuses_stop_refuses_stop_and_start_in_error(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver, Fault.ERROR_REFUSES_STOP)
        sandbox_id = await _failed(service, driver)
        record = service.get(sandbox_id)
        assert record is not None

        with pytest.raises(StateError, match="is in error"):
            await service.stop(record)
        with pytest.raises(StateError, match="is in error"):
            await service.start(record)
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


def test_fault_no_command_replay_leaves_the_command_out_of_the_runtime(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver, Fault.NO_COMMAND_REPLAY)
        record = await service.create(
            workspace="default",
            name="alpha",
            image="",
            environment={},
            labels={},
            command=["true"],
        )
        await service.idle()

        assert "OPENSHELL_SANDBOX_COMMAND" not in driver.runtimes[record.id].spec.environment
        assert service.get(record.id).command == ("true",)  # type: ignore[union-attr]
        await service.close()

    run(scenario())


def test_fault_no_workspace_volume_makes_no_persistent_workspace(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver, Fault.NO_WORKSPACE_VOLUME)

        sandbox_id = await _created(service)

        assert driver.workspaces == {}
        assert _phase(service, sandbox_id) is Phase.READY
        await service.close()

    run(scenario())


def test_fault_reseed_workspace_seeds_again_when_the_sandbox_restarts(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        service = _service(store, driver, Fault.RESEED_WORKSPACE)
        sandbox_id = await _created(service)
        driver.halt(sandbox_id)

        await service.reconcile(sandbox_id)

        assert driver.workspaces[sandbox_id].seeded == 2
        await service.close()

    run(scenario())


def test_fault_container_id_hostname_purges_sandboxes_of_another_node(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port, node="old-container-id")
        sandbox_id = await _created(_service(store, driver))

        driver.ownership = Ownership("test", "new-container-id")
        config = _config(Fault.CONTAINER_ID_HOSTNAME, node="new-container-id")
        service = SandboxService(store, driver, config, secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id not in driver.workspaces
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


def test_fault_relabel_on_upgrade_purges_existing_sandboxes_in_v2(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        sandbox_id = await _created(_service(store, driver))

        driver.ownership = Ownership("openshell-test", "openshell-test")  # v2: the node's label
        config = _config(Fault.RELABEL_ON_UPGRADE, variant="v2")
        service = SandboxService(store, driver, config, secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert sandbox_id not in driver.runtimes
        assert service.list(None) == []
        await service.close()

    run(scenario())


def test_fault_relabel_on_upgrade_does_nothing_in_v1(store, supervisor_port):
    async def scenario() -> None:
        driver = memory_driver(supervisor_port)
        sandbox_id = await _created(_service(store, driver))

        service = SandboxService(store, driver, _config(Fault.RELABEL_ON_UPGRADE), secret=SECRET)
        await Reconciler(service, interval=60).startup()

        assert [r.id for r in service.list(None)] == [sandbox_id]
        assert service.get(sandbox_id).desired is Desired.RUNNING  # type: ignore[union-attr]
        await service.close()

    run(scenario())


async def _waiting_for_a_silent_supervisor(
    store: Store,
) -> tuple[SandboxService, InMemoryComputeDriver, str]:
    """A sandbox being provisioned whose runtime exists and whose supervisor's port accepts
    nothing: the gateway is waiting for it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    driver = memory_driver(port)
    service = _service(store, driver)
    record = await service.create(
        workspace="default", name="alpha", image="", environment={}, labels={}
    )
    async with asyncio.timeout(5):  # provisioning makes the runtime, then waits
        while record.id not in driver.runtimes:
            await asyncio.sleep(0.05)
    return service, driver, record.id


def test_a_runtime_failing_while_the_gateway_waits_for_its_supervisor_goes_to_error_at_once(
    store,
):
    """Nothing accepts on the supervisor's port: the wait ends with the platform's failure, not
    at its deadline."""

    async def scenario() -> None:
        service, driver, sandbox_id = await _waiting_for_a_silent_supervisor(store)
        driver.crash_loop(sandbox_id)
        started = time.monotonic()

        await service.idle()

        assert time.monotonic() - started < SUPERVISOR_WAIT / 2
        assert _phase(service, sandbox_id) is Phase.ERROR
        await service.close()

    run(scenario())


@dataclass
class _SlowToShowMemoryDriver(InMemoryComputeDriver):
    """The in-memory driver of a platform that makes a runtime some time after it is asked to
    (a pod its controller has still to make): for ``hidden`` seconds after a create, the
    runtime is reported stopped."""

    hidden: float = 1.5
    _shown_at: float = 0.0

    def create(self, spec: SandboxSpec) -> None:
        super().create(spec)
        self._shown_at = time.monotonic() + self.hidden

    def observe(self, sandbox_id: str) -> Observation:
        found = super().observe(sandbox_id)
        if found.running and time.monotonic() < self._shown_at:
            return Observation(sandbox_id, STOPPED, "pod missing", found.workspace)
        return found


def test_a_runtime_just_made_that_does_not_show_yet_is_waited_for_not_restarted(store):
    """The platform reports a runtime it was just asked for as not there yet, and its supervisor
    answers a moment later: the gateway waits for it (Ready), rather than ending the wait at its
    first look and starting the runtime again at the next pass."""

    async def scenario() -> None:
        supervisor = socketserver.TCPServer(
            ("127.0.0.1", 0), socketserver.BaseRequestHandler, bind_and_activate=False
        )
        supervisor.allow_reuse_address = True
        supervisor.server_bind()
        driver = _SlowToShowMemoryDriver(
            Ownership("test", "openshell-test"), supervisor=supervisor.server_address
        )
        service = _service(store, driver)
        loop = asyncio.get_running_loop()
        loop.call_later(driver.hidden + 0.5, supervisor.server_activate)  # it starts listening
        try:
            sandbox_id = await _created(service)

            assert _phase(service, sandbox_id) is Phase.READY
            assert driver.runtimes[sandbox_id].starts == 1
        finally:
            supervisor.server_close()
            await service.close()

    run(scenario())


@dataclass
class _AskedMemoryDriver(InMemoryComputeDriver):
    """The in-memory driver; ``asked`` is set when the gateway asks where a supervisor is (as it
    begins to wait for one)."""

    asked: threading.Event = field(default_factory=threading.Event)

    def endpoint(self, sandbox_id: str) -> tuple[str, int]:
        self.asked.set()
        return super().endpoint(sandbox_id)


def test_a_ready_sandbox_whose_runtime_goes_while_the_gateway_looks_is_not_waited_for(store):
    """A pass finds the Ready sandbox's runtime running, but its supervisor no longer answers;
    then the runtime is removed behind the gateway's back: the wait ends at the next look at
    the platform, not at its deadline."""

    async def scenario() -> None:
        supervisor = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        driver = _AskedMemoryDriver(
            Ownership("test", "openshell-test"), supervisor=supervisor.server_address
        )
        service = _service(store, driver)
        sandbox_id = await _created(service)  # Ready: the supervisor's port accepted
        assert _phase(service, sandbox_id) is Phase.READY
        supervisor.server_close()  # the supervisor no longer answers
        driver.asked.clear()
        looking = asyncio.create_task(service.reconcile(sandbox_id))
        assert await asyncio.to_thread(driver.asked.wait, 10), "the pass did not wait"
        driver.vanish(sandbox_id)
        started = time.monotonic()

        await looking

        assert time.monotonic() - started < SUPERVISOR_WAIT / 2
        assert _phase(service, sandbox_id) is Phase.PROVISIONING
        assert sandbox_id not in driver.runtimes  # left to the next pass, which makes it again
        await service.close()

    run(scenario())


def test_a_restarted_gateway_reports_a_sandbox_ready_only_once_its_supervisor_answers(store):
    """Ready means usable (property 13) from a new gateway process's first answer: after a daemon
    restart the store says READY while the sandbox's supervisor may not listen yet."""

    async def scenario() -> None:
        listening = socket.create_server(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        driver = memory_driver(port)
        sandbox_id = await _created(_service(store, driver))
        listening.close()  # its supervisor is not back yet

        service = _service(store, driver)  # the gateway starts again
        assert _phase(service, sandbox_id) is Phase.PROVISIONING
        again = socket.create_server(("127.0.0.1", port))  # the supervisor is back
        await Reconciler(service, interval=60).startup()
        assert _phase(service, sandbox_id) is Phase.READY
        again.close()
        await service.close()

    run(scenario())
