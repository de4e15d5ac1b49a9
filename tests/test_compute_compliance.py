"""The compute driver compliance suite: what every compute driver must do, for every driver.

Each test states one rule of :class:`~openshell_core.server.compute.ComputeDriver` and runs once
per platform: the in-memory driver (pure, fast), the Docker driver on the real private engine
(sandbox image, network, volumes) and the Kubernetes driver against the in-process API emulator
(``kube_emulator``, with the agent-sandbox controller's and the kubelet's stand-ins). A new driver
joins by adding a :class:`Platform` for it: the driver under test plus the few things a test must
do *behind the driver's back* (what a user, a crash or the platform itself would do).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from kube_emulator import KubeEmulator
from kube_standins import SANDBOXES, SandboxControllerStandIn

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import NotFoundError
from openshell_core.images import ImageSet
from openshell_core.retry import poll_until
from openshell_core.runs import RunLease, new_run_id, remove_run_objects, runs_dir
from openshell_core.server import compute_docker, compute_kubernetes, compute_memory
from openshell_core.server.compute import (
    ComputeDriver,
    Observation,
    Ownership,
    RuntimeState,
    SandboxSpec,
    WatchesRuntimes,
)
from openshell_core.wire import contract

#: A file every sandbox image used here holds in its workspace (seeding copies it).
SEEDED_FILE = "README.md"
#: Seconds a runtime that fails at every start may take to be observed failing.
FAILING_WITHIN = 60.0
#: Moves the supervisor's package away inside a sandbox container.
BREAK_SUPERVISOR = (
    "set -e; d=$(python3 -c 'import openshell_core.sandbox as m, os; "
    'print(os.path.dirname(m.__file__))\'); mv "$d" "$d.broken"'
)


class Platform(Protocol):
    """A compute driver under test, and the platform-side actions the tests need."""

    driver: ComputeDriver

    def spec(self, sandbox_id: str, *, persistent_workspace: bool = True) -> SandboxSpec: ...

    def other_gateway(self, name: str = "compliance-other") -> ComputeDriver:
        """A second driver on the same platform, labelling as another gateway (``name``)."""
        ...

    def vanish(self, sandbox_id: str) -> None:
        """Remove the runtime behind the driver's back (the workspace stays)."""
        ...

    def halt(self, sandbox_id: str) -> None:
        """Stop the runtime behind the driver's back."""
        ...

    def cut_off(self, sandbox_id: str) -> None:
        """Leave the runtime running but out of the gateway's reach."""
        ...

    def break_runtime(self, sandbox_id: str) -> None:
        """Make the runtime fail at every start from now on, and end its current run (the
        platform keeps restarting it)."""
        ...

    def start_marker(self, sandbox_id: str) -> object:
        """Something that changes whenever the runtime is (re)started."""
        ...

    def environment(self, sandbox_id: str) -> dict[str, str]: ...

    def has_file(self, sandbox_id: str, name: str) -> bool: ...

    def write_file(self, sandbox_id: str, name: str) -> None: ...

    def remove_file(self, sandbox_id: str, name: str) -> None: ...


def _environment(sandbox_id: str) -> dict[str, str]:
    """What a supervisor needs to start (the gateway's full environment is not needed here)."""
    return {
        contract.SANDBOX_ID_ENV: sandbox_id,
        contract.HANDSHAKE_SECRET_ENV: secrets.token_hex(32),
    }


class MemoryPlatform:
    def __init__(self) -> None:
        self.driver = compute_memory.InMemoryComputeDriver(Ownership("compliance", "node-a"))

    def spec(self, sandbox_id: str, *, persistent_workspace: bool = True) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id,
            sandbox_id,
            contract.DEFAULT_SANDBOX_IMAGE,
            _environment(sandbox_id),
            persistent_workspace=persistent_workspace,
        )

    def other_gateway(self, name: str = "compliance-other") -> ComputeDriver:
        return compute_memory.InMemoryComputeDriver(
            Ownership(name, "node-b"),
            runtimes=self.driver.runtimes,
            workspaces=self.driver.workspaces,
        )

    def vanish(self, sandbox_id: str) -> None:
        self.driver.vanish(sandbox_id)

    def halt(self, sandbox_id: str) -> None:
        self.driver.halt(sandbox_id)

    def cut_off(self, sandbox_id: str) -> None:
        self.driver.cut_off(sandbox_id)

    def break_runtime(self, sandbox_id: str) -> None:
        self.driver.crash_loop(sandbox_id)

    def start_marker(self, sandbox_id: str) -> object:
        return self.driver.runtimes[sandbox_id].starts

    def environment(self, sandbox_id: str) -> dict[str, str]:
        return dict(self.driver.runtimes[sandbox_id].spec.environment)

    def has_file(self, sandbox_id: str, name: str) -> bool:
        found = self.driver.workspaces.get(sandbox_id)
        return found is not None and name in found.files

    def write_file(self, sandbox_id: str, name: str) -> None:
        self.driver.workspaces[sandbox_id].files.add(name)

    def remove_file(self, sandbox_id: str, name: str) -> None:
        self.driver.workspaces[sandbox_id].files.discard(name)


class DockerPlatform:
    def __init__(self, engine: Engine, image: str, network: str, run_id: str) -> None:
        self.engine, self.image, self.network, self.run_id = engine, image, network, run_id
        self.driver = self._driver("compliance")
        self._others: list[compute_docker.DockerComputeDriver] = []

    def _driver(self, gateway: str) -> compute_docker.DockerComputeDriver:
        ownership = Ownership(f"{gateway}-{self.run_id}", "node-a", run_id=self.run_id)
        return compute_docker.DockerComputeDriver(
            self.engine, network=self.network, ownership=ownership
        )

    def spec(self, sandbox_id: str, *, persistent_workspace: bool = True) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id,
            sandbox_id,
            self.image,
            _environment(sandbox_id),
            persistent_workspace=persistent_workspace,
        )

    def other_gateway(self, name: str = "compliance-other") -> ComputeDriver:
        return self._driver(name)

    def _container(self, sandbox_id: str) -> str:
        return compute_docker.container_name(sandbox_id)

    def vanish(self, sandbox_id: str) -> None:
        self.engine.remove_container(self._container(sandbox_id))

    def halt(self, sandbox_id: str) -> None:
        self.engine.stop_container(self._container(sandbox_id), timeout=5)

    def cut_off(self, sandbox_id: str) -> None:
        self.engine.disconnect_network(self.network, self._container(sandbox_id))

    def break_runtime(self, sandbox_id: str) -> None:
        # The supervisor's code moved away in the container's own layer: every start ends at
        # once with an import error. SIGTERM to PID 1 (the init) ends the current run.
        assert self._sh(sandbox_id, BREAK_SUPERVISOR) == 0
        self._sh(sandbox_id, "kill -TERM 1")

    def start_marker(self, sandbox_id: str) -> object:
        found = self.engine.inspect_container(self._container(sandbox_id)) or {}
        return (found.get("State") or {}).get("StartedAt")

    def environment(self, sandbox_id: str) -> dict[str, str]:
        found = self.engine.inspect_container(self._container(sandbox_id)) or {}
        pairs = (item.partition("=") for item in (found.get("Config") or {}).get("Env") or [])
        return {key: value for key, _, value in pairs}

    def _sh(self, sandbox_id: str, script: str) -> int:
        code, _ = self.engine.exec_run(self._container(sandbox_id), ["sh", "-c", script])
        return code

    def has_file(self, sandbox_id: str, name: str) -> bool:
        return self._sh(sandbox_id, f"test -e {contract.WORKSPACE_DIR}/{name}") == 0

    def write_file(self, sandbox_id: str, name: str) -> None:
        assert self._sh(sandbox_id, f"echo mine > {contract.WORKSPACE_DIR}/{name}") == 0

    def remove_file(self, sandbox_id: str, name: str) -> None:
        assert self._sh(sandbox_id, f"rm {contract.WORKSPACE_DIR}/{name}") == 0


class KubernetesPlatform:
    """The Kubernetes driver against the emulator, the controller and kubelet stand-ins running."""

    NAMESPACE = "sandboxes"

    def __init__(self, kube: KubeEmulator) -> None:
        self.kube = kube
        kube.create("namespaces", {"metadata": {"name": self.NAMESPACE}})
        self.controller = SandboxControllerStandIn(kube).install()
        self.settings = compute_kubernetes.KubernetesSettings(self.NAMESPACE, api=kube.url)
        self.driver = self.settings.open(Ownership("compliance", "node-a"))

    def spec(self, sandbox_id: str, *, persistent_workspace: bool = True) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id,
            sandbox_id,
            contract.DEFAULT_SANDBOX_IMAGE,
            _environment(sandbox_id),
            persistent_workspace=persistent_workspace,
        )

    def other_gateway(self, name: str = "compliance-other") -> ComputeDriver:
        return self.settings.open(Ownership(name, "node-b"))

    def _sandbox(self, sandbox_id: str) -> dict:
        return self.kube.get(SANDBOXES, f"default--{sandbox_id}", self.NAMESPACE)

    def _pod(self, sandbox_id: str) -> dict:
        return self.kube.get("pods", f"default--{sandbox_id}", self.NAMESPACE)

    def vanish(self, sandbox_id: str) -> None:
        """The Sandbox deleted with its claim kept (``kubectl delete sandbox`` after the claim's
        owner reference was taken off): its pod goes with it."""
        claim = compute_kubernetes.claim_name(f"default--{sandbox_id}")
        self.kube.patch(
            "persistentvolumeclaims",
            claim,
            {"metadata": {"ownerReferences": None}},
            "merge",
            self.NAMESPACE,
        )
        self.kube.delete(SANDBOXES, f"default--{sandbox_id}", self.NAMESPACE)

    def halt(self, sandbox_id: str) -> None:
        """The supervisor exited: the pod failed (it is never restarted in place)."""
        self.kube.patch(
            "pods",
            f"default--{sandbox_id}",
            {"status": {"phase": "Failed"}},
            "merge",
            self.NAMESPACE,
        )

    def cut_off(self, sandbox_id: str) -> None:
        raise AssertionError("a pod's address cannot be cut off from the gateway's pod")

    def break_runtime(self, sandbox_id: str) -> None:
        """The supervisor fails at its start (what a kubelet reports: the pod Failed, its agent
        container terminated with a non-zero code; the pod is never restarted in place)."""
        (agent,) = self._pod(sandbox_id)["spec"]["containers"]
        ended = {"exitCode": 1, "reason": "Error", "message": "No module named openshell_core"}
        status = {
            "name": agent["name"],
            "image": agent["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": {"terminated": ended},
        }
        self.kube.patch(
            "pods",
            f"default--{sandbox_id}",
            {"status": {"phase": "Failed", "containerStatuses": [status]}},
            "merge",
            self.NAMESPACE,
        )

    def start_marker(self, sandbox_id: str) -> object:
        return self._pod(sandbox_id)["metadata"]["uid"]

    def environment(self, sandbox_id: str) -> dict[str, str]:
        (agent,) = self._pod(sandbox_id)["spec"]["containers"]
        return {item["name"]: item["value"] for item in agent["env"]}

    def _files(self, sandbox_id: str) -> set[str]:
        claim = compute_kubernetes.claim_name(f"default--{sandbox_id}")
        return self.controller.kubelet.files.setdefault(claim, set())

    def has_file(self, sandbox_id: str, name: str) -> bool:
        return name in self._files(sandbox_id)

    def write_file(self, sandbox_id: str, name: str) -> None:
        self._files(sandbox_id).add(name)

    def remove_file(self, sandbox_id: str, name: str) -> None:
        self._files(sandbox_id).discard(name)


@pytest.fixture(scope="module")
def docker_network(engine: Engine) -> Iterator[tuple[str, str]]:
    """A network for the module's sandboxes, and the run id everything made here carries (a
    crashed run's leftovers are swept by it)."""
    run_id = new_run_id()
    with RunLease(run_id, runs_dir()).held():
        name = f"openshell-compliance-{uuid.uuid4().hex[:8]}"
        engine.create_network(name, labels=labels.ownership(role="test", run_id=run_id))
        try:
            yield name, run_id
        finally:
            remove_run_objects(engine, [run_id])


def _platform(request: pytest.FixtureRequest, name: str) -> Iterator[Platform]:
    made: Platform
    if name == "memory":
        made = MemoryPlatform()
    elif name == "kubernetes":
        made = KubernetesPlatform(request.getfixturevalue("kube"))
    else:
        engine: Engine = request.getfixturevalue("engine")
        images: ImageSet = request.getfixturevalue("images")
        network, run_id = request.getfixturevalue("docker_network")
        made = DockerPlatform(engine, images.sandbox, network, run_id)
    created = request.node.stash.setdefault(_CREATED, [])
    yield made
    for sandbox_id in created:
        made.driver.delete(sandbox_id, workspace=True)


@pytest.fixture(params=["memory", "docker", "kubernetes"])
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from _platform(request, request.param)


#: The platforms whose driver can watch its runtimes (:class:`WatchesRuntimes`).
WATCHING = ["docker", "kubernetes"]


@pytest.fixture(params=WATCHING)
def watching_platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from _platform(request, request.param)


@pytest.fixture(params=["memory", "docker"])
def platform_with_paths(request: pytest.FixtureRequest) -> Iterator[Platform]:
    """The platforms on which a running sandbox can be out of the gateway's reach (Docker: taken
    off the gateway's network). Not Kubernetes: every pod's address is routable from the
    gateway's pod, so there is no path a gateway must re-establish, and ``adopt`` only finds."""
    yield from _platform(request, request.param)


_CREATED = pytest.StashKey[list[str]]()


NewId = Callable[[], str]


@pytest.fixture
def new_id(request: pytest.FixtureRequest) -> NewId:
    """Makes sandbox ids that the platform fixture deletes (with their workspaces) at the end."""

    def make() -> str:
        sandbox_id = str(uuid.uuid4())
        request.node.stash.setdefault(_CREATED, []).append(sandbox_id)
        return sandbox_id

    return make


def _created(platform: Platform, new_id: NewId, *, persistent_workspace: bool = True) -> str:
    sandbox_id = new_id()
    platform.driver.create(platform.spec(sandbox_id, persistent_workspace=persistent_workspace))
    return sandbox_id


def _state(observed: Observation) -> tuple[RuntimeState, bool]:
    return observed.state, observed.workspace


# -- the rules --------------------------------------------------------------------------------


def test_the_driver_is_a_compute_driver(platform: Platform) -> None:
    assert isinstance(platform.driver, ComputeDriver)
    assert platform.driver.name in {
        "memory",
        contract.DEFAULT_COMPUTE_DRIVER,
        contract.KUBERNETES_COMPUTE_DRIVER,
    }


def test_create_makes_a_running_reachable_sandbox_on_a_seeded_workspace(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    observed = platform.driver.observe(sandbox_id)
    assert _state(observed) == (RuntimeState.RUNNING, True)
    assert observed.reachable
    assert platform.has_file(sandbox_id, SEEDED_FILE)


def test_the_runtime_is_labelled_as_this_gateways_sandbox(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    found = platform.driver.observe(sandbox_id).labels
    assert labels.is_ours(found)
    assert found[labels.SANDBOX_ID] == sandbox_id
    assert found[labels.ROLE] == contract.SANDBOX_ROLE
    assert found[labels.NODE_NAME] == "node-a"
    assert found[labels.GATEWAY].startswith("compliance")


def test_the_runtime_gets_the_specs_environment(platform: Platform, new_id: NewId) -> None:
    sandbox_id = _created(platform, new_id)

    environment = platform.environment(sandbox_id)
    assert environment[contract.SANDBOX_ID_ENV] == sandbox_id
    assert contract.HANDSHAKE_SECRET_ENV in environment


def test_create_again_changes_nothing_and_never_seeds_again(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)
    started = platform.start_marker(sandbox_id)
    platform.remove_file(sandbox_id, SEEDED_FILE)

    platform.driver.create(platform.spec(sandbox_id))

    assert platform.start_marker(sandbox_id) == started
    assert not platform.has_file(sandbox_id, SEEDED_FILE)
    assert [o.sandbox_id for o in platform.driver.list_owned()].count(sandbox_id) == 1


def test_stop_keeps_the_workspace_and_start_runs_the_sandbox_again(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)
    platform.write_file(sandbox_id, "mine.txt")

    platform.driver.stop(sandbox_id)
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.STOPPED, True)

    platform.driver.start(sandbox_id)
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.RUNNING, True)
    assert platform.has_file(sandbox_id, "mine.txt")


def test_a_runtime_stopped_behind_the_drivers_back_is_observed_stopped(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    platform.halt(sandbox_id)

    observed = platform.driver.observe(sandbox_id)
    assert _state(observed) == (RuntimeState.STOPPED, True)
    assert observed.detail


def test_a_vanished_runtime_is_absent_and_is_made_again_on_the_same_workspace(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)
    platform.write_file(sandbox_id, "mine.txt")

    platform.vanish(sandbox_id)
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.ABSENT, True)

    platform.driver.create(platform.spec(sandbox_id))
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.RUNNING, True)
    assert platform.has_file(sandbox_id, "mine.txt")


def test_start_and_stop_without_a_runtime_raise_not_found(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)
    platform.vanish(sandbox_id)

    with pytest.raises(NotFoundError):
        platform.driver.start(sandbox_id)
    with pytest.raises(NotFoundError):
        platform.driver.stop(sandbox_id)


def test_delete_keeps_the_workspace_unless_asked_and_may_be_repeated(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    platform.driver.delete(sandbox_id, workspace=False)
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.ABSENT, True)

    platform.driver.delete(sandbox_id, workspace=True)
    platform.driver.delete(sandbox_id, workspace=True)
    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.ABSENT, False)


def test_without_a_persistent_workspace_the_sandbox_runs_with_none(
    platform: Platform, new_id: NewId
) -> None:
    """The ``no-workspace-volume`` fault's spec: the files go with the runtime."""
    sandbox_id = _created(platform, new_id, persistent_workspace=False)

    assert _state(platform.driver.observe(sandbox_id)) == (RuntimeState.RUNNING, False)


def test_list_owned_lists_this_gateways_sandboxes_only(platform: Platform, new_id: NewId) -> None:
    ours = _created(platform, new_id)
    other_driver = platform.other_gateway()
    theirs = new_id()
    other_driver.create(platform.spec(theirs))

    listed = {o.sandbox_id: o for o in platform.driver.list_owned()}
    assert ours in listed and theirs not in listed
    assert _state(listed[ours]) == (RuntimeState.RUNNING, True)
    other_label = other_driver.observe(theirs).labels[labels.GATEWAY]
    assert [o.sandbox_id for o in platform.driver.list_owned(other_label)] == [theirs]


def test_a_runtime_out_of_reach_is_adopted_without_a_restart(
    platform_with_paths: Platform, new_id: NewId
) -> None:
    platform = platform_with_paths
    sandbox_id = _created(platform, new_id)
    started = platform.start_marker(sandbox_id)

    platform.cut_off(sandbox_id)
    observed = platform.driver.observe(sandbox_id)
    assert observed.running and not observed.reachable

    platform.driver.adopt(sandbox_id)
    observed = platform.driver.observe(sandbox_id)
    assert observed.running and observed.reachable
    assert platform.start_marker(sandbox_id) == started


def test_the_supervisor_endpoint_and_the_workspace_are_named(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    host, port = platform.driver.endpoint(sandbox_id)
    assert host and port == contract.SUPERVISOR_PORT
    assert sandbox_id in platform.driver.workspace_name(sandbox_id)


def test_a_runtime_that_fails_at_every_start_is_observed_failing(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)
    assert platform.driver.observe(sandbox_id).failure == ""

    platform.break_runtime(sandbox_id)

    observed = poll_until(
        lambda: platform.driver.observe(sandbox_id),
        lambda observed: bool(observed.failure),
        timeout=FAILING_WITHIN,
        what=f"sandbox {sandbox_id} observed failing",
        describe=lambda observed: f"{observed.detail}, not failing",
    )
    assert observed.workspace
    poll_until(  # a listing taken during one of its short runs may not show it
        lambda: {o.sandbox_id: o.failure for o in platform.driver.list_owned()},
        lambda listed: bool(listed.get(sandbox_id)),
        timeout=10,
        what=f"the listing to say sandbox {sandbox_id} keeps failing",
    )


def test_a_runtime_stopped_and_started_again_is_not_failing(
    platform: Platform, new_id: NewId
) -> None:
    sandbox_id = _created(platform, new_id)

    platform.halt(sandbox_id)
    assert platform.driver.observe(sandbox_id).failure == ""
    platform.driver.start(sandbox_id)

    assert platform.driver.observe(sandbox_id).failure == ""


def test_a_driver_can_watch_its_runtimes_exactly_where_the_suite_says(
    platform: Platform, request: pytest.FixtureRequest
) -> None:
    """A driver that gains a watch joins :data:`WATCHING`, so that the watch's rules run on it."""
    name = request.node.callspec.params["platform"]
    assert isinstance(platform.driver, WatchesRuntimes) == (name in WATCHING)


def test_the_watch_reports_each_start_and_end_of_a_runtime_and_ends_when_told(
    watching_platform: Platform, new_id: NewId
) -> None:
    # A gateway of its own: no other test's runtimes change under its label.
    driver = watching_platform.other_gateway(f"watch-{uuid.uuid4().hex[:8]}")
    assert isinstance(driver, WatchesRuntimes)
    calls: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=driver.watch, args=(lambda: calls.append(time.monotonic()), stop), daemon=True
    )
    watcher.start()

    def ended() -> str | None:
        return None if watcher.is_alive() else "the watch returned before it was told to stop"

    try:
        sandbox_id = new_id()
        driver.create(watching_platform.spec(sandbox_id))
        poll_until(
            lambda: list(calls),
            lambda seen: len(seen) >= 1,
            timeout=30,
            what="the watch to report the start",
            fail_fast=ended,
        )
        halted_at = time.monotonic()
        watching_platform.halt(sandbox_id)
        poll_until(
            lambda: list(calls),
            lambda seen: any(at >= halted_at for at in seen),
            timeout=30,
            what="the watch to report the runtime stopped behind the driver's back",
            fail_fast=ended,
        )
    finally:
        stop.set()
        watcher.join(30)
    assert not watcher.is_alive(), "the watch did not end within 30 s of being told to"
