"""Gateway lifecycle on the real engine: every cell of the command x state matrix, the upstream
hazards done better, failure cleanup, concurrency and ownership.

Each test deploys the stub gateway image (``tests/gateway_stub``) under a unique name and port, with
host-side files in its own ``XDG_CONFIG_HOME``; whatever it made is removed afterwards, also when
it fails. A volume's state is proven kept by the PKI the stub put on it (the two stub images bake
different PKIs, and the one on the volume must win) and by a marker file.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from gateway_stub import StubImages, build_stub_images, make_pki

from openshell_core import labels, runs
from openshell_core.cli import main
from openshell_core.engine import Engine
from openshell_core.errors import (
    EngineError,
    ImageNotFoundError,
    NotFoundError,
    ReadinessTimeout,
    StateError,
    UsageError,
)
from openshell_core.faults import Fault
from openshell_core.gateway import (
    DeployMode,
    DeployOptions,
    DeployOutcome,
    GatewayState,
    container_name,
    deploy,
    destroy,
    detect_state,
    network_name,
    node_name,
    stop,
    volume_name,
)
from openshell_core.gateway.names import MAX_NORMALISED_LENGTH
from openshell_core.gateway.reconcile import (
    ensure_container,
    ensure_network,
    ensure_volume,
    gateway_container_spec,
    gateway_labels,
    reconcile_container_network,
)
from openshell_core.host.metadata import (
    GatewayMetadata,
    MtlsFiles,
    gateway_dir,
    metadata_path,
    read_active_gateway,
    read_metadata,
    set_active_gateway,
)
from openshell_core.runs import remove_run_objects

STATE_DIR = "/var/lib/openshell"
MARKER = f"{STATE_DIR}/marker"


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(engine: Engine, base_image: str) -> Iterator[StubImages]:
    images = build_stub_images(engine, base_image)
    yield images
    for ref in images.all:
        engine.remove_image(ref)


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for variable in ("OPENSHELL_FAULTS", "OPENSHELL_GATEWAY"):
        monkeypatch.delenv(variable, raising=False)
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Lab:
    """One gateway under test, and everything a test made for it."""

    engine: Engine
    images: StubImages
    base_image: str
    name: str
    port: int = field(default_factory=free_port)
    run_id: str = field(default_factory=lambda: f"gwtest-{uuid.uuid4().hex[:8]}")
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def container(self) -> str:
        return container_name(self.name)

    def options(self, **changes: Any) -> DeployOptions:
        base = DeployOptions(
            name=self.name,
            image=self.images.test1,
            port=self.port,
            run_id=self.run_id,
            faults=frozenset(),
            health_timeout=30,
            api_timeout=20,
        )
        return replace(base, **changes)

    def deploy(self, **changes: Any) -> DeployOutcome:
        return deploy(self.engine, self.options(**changes))

    def state(self) -> GatewayState:
        return detect_state(self.engine, self.name).state

    def inspect(self) -> dict[str, Any]:
        found = self.engine.inspect_container(self.container)
        assert found is not None, f"no container {self.container}"
        return found

    def write_marker(self, text: str = "kept") -> None:
        code, output = self.engine.exec_run(self.container, ["sh", "-c", f"echo {text} > {MARKER}"])
        assert code == 0, output

    def host_ca(self) -> bytes:
        return MtlsFiles.of(self.name).ca_cert.read_bytes()

    def volume_file(self, path: str) -> bytes | None:
        """A file on the gateway volume, read through a helper container that never starts."""
        helper = f"{self.container}-reader-{uuid.uuid4().hex[:6]}"
        self.engine.create_container(
            name=helper,
            image=self.base_image,
            command=["true"],
            network="none",
            binds=[f"{volume_name(self.name)}:{STATE_DIR}"],
            labels=labels.ownership(run_id=self.run_id),
            init=False,
        )
        try:
            return self.engine.read_container_file(helper, path)
        except NotFoundError:
            return None
        finally:
            self.engine.remove_container(helper)

    def on_volume(self, script: str) -> None:
        """Run a shell script with the gateway volume mounted (the gateway container stopped)."""
        helper = f"{self.container}-helper-{uuid.uuid4().hex[:6]}"
        self.engine.create_container(
            name=helper,
            image=self.base_image,
            command=["sh", "-c", script],
            network="none",
            binds=[f"{volume_name(self.name)}:{STATE_DIR}"],
            labels=labels.ownership(run_id=self.run_id),
            init=False,
        )
        try:
            self.engine.start_container(helper)
            assert self.engine.wait_container(helper, timeout=30) == 0
        finally:
            self.engine.remove_container(helper)

    def make(self, state: GatewayState) -> None:
        """Bring the gateway into ``state`` the way users get there."""
        if state is GatewayState.NONE:
            return
        if state is GatewayState.CONTAINER_ONLY:
            self._container_without_volume()
        else:
            self.deploy()
            self.write_marker()
            if state is GatewayState.STOPPED:
                stop(self.engine, self.name)
            elif state is GatewayState.VOLUME_ONLY:
                self.engine.remove_container(self.container)  # docker rm -f
        assert self.state() is state

    def _container_without_volume(self) -> None:
        self.engine.create_network(
            network_name(self.name), labels=gateway_labels(self.name, self.run_id)
        )
        self.engine.create_container(
            name=self.container,
            image=self.images.test1,
            hostname=node_name(self.name),
            labels=gateway_labels(self.name, self.run_id),
            network=network_name(self.name),
            ports={"30051/tcp": ("127.0.0.1", self.port)},
            restart_policy="unless-stopped",
        )
        self.engine.start_container(self.container)

    def foreign(self, kind: str, name: str) -> None:
        """Remember an object this test made without our labels, to remove it afterwards."""
        self.extra.append((kind, name))

    def cleanup(self) -> None:
        remove_run_objects(self.engine, [self.run_id])
        for kind, name in self.extra:
            if kind == "container":
                self.engine.remove_container(name)
        for kind, name in self.extra:
            if kind == "network":
                self.engine.remove_network(name)
            elif kind == "volume":
                self.engine.remove_volume(name)
        # Objects of this gateway left by a test that failed half-way (no run id on them).
        self.engine.remove_container(self.container)
        self.engine.remove_network(network_name(self.name))
        self.engine.remove_volume(volume_name(self.name))


@pytest.fixture
def lab(engine: Engine, stub: StubImages, base_image: str, unique_name: str) -> Iterator[Lab]:
    made = Lab(engine, stub, base_image, unique_name)
    # A lease like a real run's, so that a plugin run sweeping dead runs meanwhile spares it.
    with runs.RunLease(made.run_id, runs.runs_dir()).held():
        try:
            yield made
        finally:
            made.cleanup()


def leftovers(engine: Engine, name: str) -> list[str]:
    found = []
    if engine.inspect_container(container_name(name)) is not None:
        found.append("container")
    if engine.inspect_volume(volume_name(name)) is not None:
        found.append("volume")
    if engine.inspect_network(network_name(name)) is not None:
        found.append("network")
    return found


ALL_STATES = list(GatewayState)
NOT_NONE = [state for state in GatewayState if state is not GatewayState.NONE]


# -- gateway start (deploy) x state -----------------------------------------------------------


def test_start_on_none_deploys_a_fresh_gateway(lab: Lab) -> None:
    outcome = lab.deploy()
    assert outcome.mode is DeployMode.FRESH
    assert lab.state() is GatewayState.RUNNING
    # Ready means the API answers over mTLS; Docker's health verdict may still be a probe behind.
    assert lab.inspect()["State"]["Health"]["Status"] in ("starting", "healthy")
    assert outcome.endpoint == f"https://127.0.0.1:{lab.port}"
    assert read_metadata(lab.name) == outcome.metadata
    assert outcome.mtls.exist()
    assert lab.volume_file(f"{STATE_DIR}/pki/ca.crt") == lab.host_ca()


def test_a_directory_read_from_a_container_holds_each_of_its_files_by_relative_path(
    lab: Lab,
) -> None:
    lab.deploy()
    lab.write_marker("read")
    found = lab.engine.read_container_files(lab.container, STATE_DIR)
    assert found["marker"] == b"read\n"
    assert found["pki/ca.crt"] == lab.host_ca()
    assert all(not name.startswith("/") and name for name in found)
    with pytest.raises(NotFoundError):
        lab.engine.read_container_files(lab.container, f"{STATE_DIR}/no-such-directory")


def test_start_on_running_changes_nothing(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    before = lab.inspect()
    network_id = detect_state(lab.engine, lab.name).network_id
    outcome = lab.deploy()
    after = lab.inspect()
    assert outcome.mode is DeployMode.ALREADY_RUNNING
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert detect_state(lab.engine, lab.name).network_id == network_id


def test_start_on_stopped_resumes_the_same_container_without_looking_up_an_image(
    lab: Lab,
) -> None:
    lab.make(GatewayState.STOPPED)
    before = lab.inspect()
    ca = lab.host_ca()
    outcome = lab.deploy(image="openshell-gateway-stub:never-built")
    assert outcome.mode is DeployMode.RESUME
    assert outcome.container_id == before["Id"]
    assert outcome.image == lab.images.test1
    assert lab.state() is GatewayState.RUNNING
    assert lab.host_ca() == ca
    assert lab.volume_file(MARKER) == b"kept\n"


def test_a_resume_replaces_host_side_client_files_the_gateway_no_longer_takes(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    other = make_pki("another gateway")
    mtls = MtlsFiles.of(lab.name)
    for path, data in ((mtls.ca_cert, other["ca.crt"]), (mtls.cert, other["client.crt"]),
                       (mtls.key, other["client.key"])):  # fmt: skip
        path.write_bytes(data)
    lab.deploy()
    assert lab.host_ca() == lab.volume_file(f"{STATE_DIR}/pki/ca.crt")


def test_a_resume_restores_host_side_client_files_that_were_deleted(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    shutil.rmtree(MtlsFiles.of(lab.name).ca_cert.parent)
    outcome = lab.deploy()
    assert outcome.mtls.exist()
    assert lab.host_ca() == lab.volume_file(f"{STATE_DIR}/pki/ca.crt")


def test_start_on_volume_only_creates_a_container_on_the_same_volume(lab: Lab) -> None:
    lab.make(GatewayState.VOLUME_ONLY)
    ca = lab.host_ca()
    outcome = lab.deploy(port=None)
    container = lab.inspect()
    assert outcome.mode is DeployMode.RESUME
    assert outcome.port == lab.port, "the port recorded in the metadata wins over the default"
    assert container["Config"]["Hostname"] == node_name(lab.name)
    assert lab.host_ca() == ca
    assert lab.volume_file(MARKER) == b"kept\n"


def test_start_on_container_only_is_refused_and_touches_nothing(lab: Lab) -> None:
    lab.make(GatewayState.CONTAINER_ONLY)
    before = lab.inspect()
    with pytest.raises(StateError, match="no volume"):
        lab.deploy()
    assert lab.engine.inspect_volume(volume_name(lab.name)) is None
    assert lab.inspect()["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert lab.state() is GatewayState.CONTAINER_ONLY


# -- gateway start --recreate x state ---------------------------------------------------------


def test_recreate_on_none_deploys_a_fresh_gateway(lab: Lab) -> None:
    outcome = lab.deploy(recreate=True)
    assert outcome.mode is DeployMode.RECREATE
    assert outcome.state_before is GatewayState.NONE
    assert lab.state() is GatewayState.RUNNING


@pytest.mark.parametrize("state", NOT_NONE, ids=lambda s: s.value)
def test_recreate_wipes_every_state_and_deploys_fresh(lab: Lab, state: GatewayState) -> None:
    lab.make(state)
    old_id = (lab.engine.inspect_container(lab.container) or {}).get("Id")
    outcome = lab.deploy(recreate=True, port=free_port())
    assert outcome.mode is DeployMode.RECREATE
    assert outcome.state_before is state
    assert outcome.container_id != old_id
    assert lab.state() is GatewayState.RUNNING
    assert lab.volume_file(MARKER) is None, "the old volume's state must be gone"
    assert lab.volume_file(f"{STATE_DIR}/starts") is not None


# -- gateway stop x state ---------------------------------------------------------------------


def test_stop_on_running_stops_and_keeps_volume_network_and_metadata(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    metadata = read_metadata(lab.name)
    outcome = stop(lab.engine, lab.name)
    assert outcome.stopped
    assert outcome.state_after is GatewayState.STOPPED
    assert sorted(leftovers(lab.engine, lab.name)) == ["container", "network", "volume"]
    assert read_metadata(lab.name) == metadata
    assert lab.inspect()["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


@pytest.mark.parametrize(
    "state",
    [GatewayState.NONE, GatewayState.STOPPED, GatewayState.VOLUME_ONLY],
    ids=lambda s: s.value,
)
def test_stop_on_a_gateway_that_does_not_run_is_a_no_op(lab: Lab, state: GatewayState) -> None:
    lab.make(state)
    before = leftovers(lab.engine, lab.name)
    outcome = stop(lab.engine, lab.name)
    assert not outcome.stopped
    assert outcome.state_after is state
    assert leftovers(lab.engine, lab.name) == before


def test_stop_on_container_only_stops_the_container_and_keeps_it(lab: Lab) -> None:
    lab.make(GatewayState.CONTAINER_ONLY)
    outcome = stop(lab.engine, lab.name)
    assert outcome.stopped
    assert outcome.state_after is GatewayState.CONTAINER_ONLY
    assert not lab.inspect()["State"]["Running"]


# -- gateway destroy x state ------------------------------------------------------------------


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.value)
def test_destroy_removes_everything_of_ours_from_every_state(
    lab: Lab, state: GatewayState, config_home: Path
) -> None:
    lab.make(state)
    set_active_gateway(lab.name)
    outcome = destroy(lab.engine, lab.name)
    assert outcome.state_before is state
    assert lab.state() is GatewayState.NONE
    assert leftovers(lab.engine, lab.name) == []
    assert not gateway_dir(lab.name).exists()
    assert read_active_gateway() is None
    assert lab.engine.inspect_image(lab.images.test1) is not None, "images are never removed"


def test_destroy_leaves_another_active_gateway_active(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    set_active_gateway("someone-else")
    destroy(lab.engine, lab.name)
    assert read_active_gateway() == "someone-else"


# -- gateway status x state (the CLI) ---------------------------------------------------------


@pytest.fixture
def cli_engine(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    return "host"


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.value)
def test_status_reports_the_state_and_exits_0_only_when_running(
    lab: Lab, state: GatewayState, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.make(state)
    code = main(["gateway", "status", "--name", lab.name, "--engine", cli_engine, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == state.value
    assert code == (0 if state is GatewayState.RUNNING else 4)


def test_status_of_a_look_alike_gateway_that_is_not_ours_says_so_and_exits_4(
    lab: Lab, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, name = lab.engine, container_name(lab.name)
    engine.create_volume(name, labels={})
    lab.foreign("volume", name)
    engine.create_network(f"{name}-foreign", labels={})
    lab.foreign("network", f"{name}-foreign")
    engine.create_container(
        name=name,
        image=lab.base_image,
        command=["sleep", "600"],
        network=f"{name}-foreign",
        binds=[f"{name}:{STATE_DIR}"],
    )
    engine.start_container(name)
    lab.foreign("container", name)
    status = ["gateway", "status", "--name", lab.name, "--engine", cli_engine]

    assert main(status) == 4
    out = capsys.readouterr().out
    assert out.startswith(
        f"gateway {lab.name}: not ours: Docker holds container {name!r}, volume {name!r} without "
        "the openshell.ai/managed-by=pytest-openshell label"
    )
    assert "running" not in out
    assert main([*status, "--json"]) == 4
    record = json.loads(capsys.readouterr().out)
    assert (record["state"], record["docker_state"]) == ("not-ours", "running")


@pytest.mark.parametrize("verb", ["start", "stop", "destroy", "status"])
@pytest.mark.parametrize("name", ["", "  "], ids=["empty", "blank"])
def test_an_empty_or_blank_gateway_name_is_a_usage_error_for_every_verb(
    lab: Lab,
    cli_engine: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    verb: str,
    name: str,
) -> None:
    # Were the name taken for "none given", this gateway would be the one acted on.
    monkeypatch.setenv("OPENSHELL_GATEWAY", lab.name)
    lab.make(GatewayState.RUNNING)
    argv = ["gateway", verb, "--name", name, "--engine", cli_engine]
    if verb == "start":
        argv += ["--image", lab.images.test1, "--port", str(lab.port)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "a gateway name has at least one character, only letters, digits, '.', '_' and '-', "
        "and starts with a letter or digit" in err
    )
    assert lab.state() is GatewayState.RUNNING


# -- the container contract -------------------------------------------------------------------


def test_the_gateway_container_follows_the_contract(lab: Lab) -> None:
    lab.deploy(gateway_host="gw.example", faults=frozenset({Fault.REGENERATE_HANDSHAKE_SECRET}))
    container = lab.inspect()
    config, host = container["Config"], container["HostConfig"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["Hostname"] == node_name(lab.name)
    assert env["OPENSHELL_NODE_NAME"] == node_name(lab.name)
    assert env["OPENSHELL_GATEWAY_NAME"] == lab.name
    assert env["OPENSHELL_NETWORK"] == network_name(lab.name)
    assert env["OPENSHELL_GATEWAY_PORT"] == str(lab.port)
    assert env["OPENSHELL_RUN_ID"] == lab.run_id
    assert env["OPENSHELL_EXTRA_SANS"] == "gw.example"
    assert env["OPENSHELL_FAULTS"] == "regenerate-handshake-secret"
    assert env["DOCKER_HOST"] == "unix:///run/openshell-engine/docker.sock"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["Init"] is True
    assert host["PortBindings"]["30051/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(lab.port)}]
    mounts = {mount["Destination"]: mount for mount in container["Mounts"]}
    assert mounts[STATE_DIR]["Name"] == volume_name(lab.name)
    assert mounts["/run/openshell-engine"]["Source"] == str(lab.engine.socket_dir)
    assert list(container["NetworkSettings"]["Networks"]) == [network_name(lab.name)]
    assert config["Labels"][labels.GATEWAY] == lab.name
    assert config["Labels"][labels.ROLE] == "gateway"
    assert labels.is_ours(config["Labels"])
    assert read_metadata(lab.name) == GatewayMetadata.local(lab.name, lab.port, "gw.example")


def test_a_gateway_name_of_the_maximum_length_deploys(lab: Lab) -> None:
    lab.name = (lab.name + "x" * MAX_NORMALISED_LENGTH)[:MAX_NORMALISED_LENGTH]
    lab.deploy()
    assert lab.inspect()["Config"]["Hostname"] == node_name(lab.name)


# -- the stale network (upstream's `network <id> not found`) ----------------------------------


def kill_and_remove_network(lab: Lab) -> str:
    """The `kill` scenario: docker kill, then docker network rm. Returns the old network id."""
    old = detect_state(lab.engine, lab.name).network_id
    lab.engine.kill_container(lab.container)
    assert lab.engine.remove_network(network_name(lab.name))
    return str(old)


def test_a_killed_gateway_whose_network_was_removed_resumes_on_a_new_network(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    ca = lab.host_ca()
    old_network = kill_and_remove_network(lab)
    assert detect_state(lab.engine, lab.name).state is GatewayState.STOPPED
    outcome = lab.deploy()
    facts = detect_state(lab.engine, lab.name)
    assert outcome.mode is DeployMode.RESUME
    assert facts.network_id != old_network
    assert facts.networks == {network_name(lab.name): facts.network_id}
    assert lab.host_ca() == ca


def test_without_network_reconcile_the_stale_network_fails_the_resume_and_keeps_the_volume(
    lab: Lab,
) -> None:
    lab.make(GatewayState.RUNNING)
    kill_and_remove_network(lab)
    with pytest.raises(EngineError, match="not found"):
        lab.deploy(faults=frozenset({Fault.NO_NETWORK_RECONCILE}))
    assert lab.state() is GatewayState.VOLUME_ONLY
    assert lab.volume_file(MARKER) == b"kept\n"


def test_reconciling_a_running_gateway_never_pulls_it_off_its_network(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    before = lab.inspect()["NetworkSettings"]["Networks"]
    network_id = ensure_network(lab.engine, lab.name, run_id=lab.run_id)
    changed = reconcile_container_network(lab.engine, lab.container, network_name(lab.name))
    assert not changed
    assert network_id == before[network_name(lab.name)]["NetworkID"]
    assert lab.inspect()["NetworkSettings"]["Networks"] == before


def add_sandbox(lab: Lab) -> str:
    """A container the gateway would have made for a sandbox, on the gateway network."""
    name = f"openshell-sandbox-{lab.name}"
    sandbox_labels = labels.ownership(gateway=lab.name, role="sandbox", run_id=lab.run_id)
    lab.engine.create_volume(f"{name}-workspace", labels=sandbox_labels)
    lab.engine.create_container(
        name=name,
        image=lab.base_image,
        command=["sleep", "600"],
        network=network_name(lab.name),
        binds=[f"{name}-workspace:/sandbox"],
        labels=sandbox_labels,
    )
    lab.engine.start_container(name)
    return name


def test_a_failed_resume_keeps_the_network_while_sandboxes_are_on_it(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    sandbox = add_sandbox(lab)
    lab.on_volume(f"touch {STATE_DIR}/stub-fail")
    with pytest.raises(ReadinessTimeout):
        lab.deploy()
    assert leftovers(lab.engine, lab.name) == ["volume", "network"]
    found = lab.engine.inspect_container(sandbox)
    assert found is not None
    assert found["State"]["Running"]
    assert list(found["NetworkSettings"]["Networks"]) == [network_name(lab.name)]


def test_destroy_removes_the_gateways_sandboxes_with_it(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    sandbox = add_sandbox(lab)
    outcome = destroy(lab.engine, lab.name)
    assert f"container {sandbox}" in outcome.removed
    assert lab.engine.inspect_container(sandbox) is None
    assert lab.engine.inspect_volume(f"{sandbox}-workspace") is None
    assert leftovers(lab.engine, lab.name) == []


# -- image rules ------------------------------------------------------------------------------


def test_volume_only_resume_with_a_different_image_keeps_the_volume_state(lab: Lab) -> None:
    lab.make(GatewayState.VOLUME_ONLY)
    ca = lab.host_ca()
    outcome = lab.deploy(image=lab.images.test2)
    assert outcome.mode is DeployMode.RESUME
    assert lab.inspect()["Config"]["Image"] == lab.images.test2
    assert lab.host_ca() == ca, "the PKI on the volume wins over the one the new image bakes"
    assert lab.volume_file(MARKER) == b"kept\n"
    starts = (lab.volume_file(f"{STATE_DIR}/starts") or b"").decode().split()
    assert starts[0::2] == ["test1", "test2"]


def test_a_missing_image_fails_before_anything_is_created(lab: Lab) -> None:
    with pytest.raises(ImageNotFoundError, match="not found locally"):
        lab.deploy(image="openshell-gateway-stub:never-built")
    assert leftovers(lab.engine, lab.name) == []
    assert not gateway_dir(lab.name).exists()


def test_a_volume_only_resume_with_a_missing_image_keeps_the_volume(lab: Lab) -> None:
    lab.make(GatewayState.VOLUME_ONLY)
    with pytest.raises(ImageNotFoundError):
        lab.deploy(image="openshell-gateway-stub:never-built")
    assert lab.state() is GatewayState.VOLUME_ONLY
    assert lab.volume_file(MARKER) == b"kept\n"


# -- failures and their cleanup ---------------------------------------------------------------


def test_a_failed_resume_removes_container_and_network_and_keeps_the_volume(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    ca = lab.host_ca()
    lab.write_marker()
    code, _ = lab.engine.exec_run(lab.container, ["touch", f"{STATE_DIR}/stub-fail"])
    assert code == 0
    stop(lab.engine, lab.name)
    with pytest.raises(ReadinessTimeout) as failure:
        lab.deploy()
    assert "failing on purpose" in str(failure.value), "the error carries the container log"
    assert leftovers(lab.engine, lab.name) == ["volume"]
    assert read_metadata(lab.name) is not None
    lab.on_volume(f"rm {STATE_DIR}/stub-fail")
    outcome = lab.deploy(port=None)
    assert outcome.mode is DeployMode.RESUME
    assert outcome.port == lab.port
    assert lab.host_ca() == ca
    assert lab.volume_file(MARKER) == b"kept\n"


def test_with_the_wipe_fault_a_failed_resume_destroys_the_volume(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    lab.on_volume(f"touch {STATE_DIR}/stub-fail")
    with pytest.raises(ReadinessTimeout):
        lab.deploy(faults=frozenset({Fault.WIPE_VOLUME_ON_RESUME_FAILURE}))
    assert leftovers(lab.engine, lab.name) == []


def test_a_crash_looping_resume_fails_fast_as_a_restart_loop(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    lab.on_volume(f"touch {STATE_DIR}/stub-fail")
    with pytest.raises(ReadinessTimeout, match=r"restarting in a loop|exited unexpectedly"):
        lab.deploy(health_timeout=120)


def test_a_failed_fresh_deploy_leaves_nothing_behind(lab: Lab) -> None:
    with pytest.raises(ReadinessTimeout) as failure:
        lab.deploy(image=lab.images.broken)
    assert "failing on purpose" in str(failure.value)
    assert leftovers(lab.engine, lab.name) == []
    assert not gateway_dir(lab.name).exists()


def test_a_port_taken_by_a_process_refuses_a_fresh_deploy_before_anything_is_created(
    lab: Lab,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", lab.port))
        holder.listen()
        with pytest.raises(StateError) as refused:
            lab.deploy()
    assert refused.value.message == (
        f"cannot start gateway {lab.name!r}: port {lab.port} on 127.0.0.1 is in use by another "
        "process (not a container); nothing was created"
    )
    assert f"pytest-openshell gateway start --name {lab.name} --port N" in str(refused.value.hint)
    assert leftovers(lab.engine, lab.name) == []


def test_a_port_taken_by_a_process_refuses_a_resume_and_keeps_the_stopped_gateway(
    lab: Lab,
) -> None:
    lab.make(GatewayState.STOPPED)
    before = lab.inspect()["Id"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", lab.port))
        holder.listen()
        with pytest.raises(StateError, match=f"port {lab.port} on 127.0.0.1 is in use"):
            lab.deploy(port=None)
    assert lab.state() is GatewayState.STOPPED
    assert lab.inspect()["Id"] == before, "the stopped container was not touched"


def test_cli_start_on_a_port_taken_by_a_process_exits_4_naming_the_port_and_the_fix(
    lab: Lab, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gateway", "start", "--name", lab.name, "--port", str(lab.port)]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", lab.port))
        holder.listen()
        code = main([*argv, "--image", lab.images.test1, "--engine", cli_engine])
    err = capsys.readouterr().err
    assert code == 4, err
    assert (
        f"error: cannot start gateway '{lab.name}': port {lab.port} on 127.0.0.1 is in use" in err
    )
    assert "--port N" in err
    assert "Error response from daemon" not in err
    assert leftovers(lab.engine, lab.name) == []


def test_without_a_restart_policy_a_crashing_gateway_is_reported_as_exited(lab: Lab) -> None:
    with pytest.raises(ReadinessTimeout, match=r"exited unexpectedly \(exit code 3"):
        lab.deploy(image=lab.images.broken, faults=frozenset({Fault.NO_RESTART_POLICY}))


def test_a_port_held_by_another_container_is_reported_by_name_before_anything_is_created(
    lab: Lab,
) -> None:
    other = Lab(lab.engine, lab.images, lab.base_image, f"{lab.name}o", run_id=lab.run_id)
    other.deploy()
    with pytest.raises(StateError, match=f"port {other.port} is held by container"):
        lab.deploy(port=other.port)
    assert leftovers(lab.engine, lab.name) == []
    other.cleanup()


def test_corrupt_metadata_stops_a_resume_and_keeps_everything(lab: Lab) -> None:
    lab.make(GatewayState.STOPPED)
    metadata_path(lab.name).write_text('{"name": "')
    with pytest.raises(StateError, match="not valid JSON"):
        lab.deploy()
    assert lab.state() is GatewayState.STOPPED
    assert lab.volume_file(MARKER) == b"kept\n"


def test_a_running_gateway_whose_host_files_were_deleted_gets_them_back(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    ca = lab.host_ca()
    metadata = read_metadata(lab.name)
    shutil.rmtree(gateway_dir(lab.name))
    outcome = lab.deploy(port=None)
    assert outcome.mode is DeployMode.ALREADY_RUNNING
    assert read_metadata(lab.name) == metadata
    assert lab.host_ca() == ca


def test_another_port_for_a_running_gateway_is_refused_and_changes_nothing(lab: Lab) -> None:
    lab.make(GatewayState.RUNNING)
    before = lab.inspect()["Id"]
    port = free_port()
    with pytest.raises(StateError) as refused:
        lab.deploy(port=port)
    assert refused.value.message == (
        f"gateway {lab.name!r} is already running on port {lab.port}; it was left as it is and "
        f"--port {port} was not applied"
    )
    assert f"`pytest-openshell gateway stop --name {lab.name}`" in str(refused.value.hint)
    assert lab.inspect()["Id"] == before
    assert read_metadata(lab.name) == GatewayMetadata.local(lab.name, lab.port)


def test_another_port_for_a_stopped_gateway_moves_it_to_a_new_container_on_the_same_volume(
    lab: Lab,
) -> None:
    lab.make(GatewayState.STOPPED)
    before = lab.inspect()["Id"]
    ca = lab.host_ca()
    port = free_port()
    outcome = lab.deploy(port=port, image=None)
    assert (outcome.mode, outcome.port) == (DeployMode.RESUME, port)
    assert outcome.container_id != before
    assert lab.inspect()["Config"]["Image"] == lab.images.test1, "the gateway's own image"
    assert lab.host_ca() == ca
    assert lab.volume_file(MARKER) == b"kept\n"
    assert read_metadata(lab.name) == GatewayMetadata.local(lab.name, port)


def test_cli_start_with_another_port_on_a_running_gateway_exits_4_and_says_how_to_move_it(
    lab: Lab, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.make(GatewayState.RUNNING)
    port = free_port()
    start = ["gateway", "start", "--name", lab.name, "--port", str(port), "--engine", cli_engine]
    assert main(start) == 4
    err = capsys.readouterr().err
    assert f"is already running on port {lab.port}" in err
    assert "already running." not in err, "not the success line"
    assert main(["gateway", "stop", "--name", lab.name, "--engine", cli_engine]) == 0
    assert main(start) == 0, capsys.readouterr().err
    assert detect_state(lab.engine, lab.name).host_port == port
    assert lab.volume_file(MARKER) == b"kept\n"


def test_an_explicit_port_applies_to_a_new_container_on_resume(lab: Lab) -> None:
    lab.make(GatewayState.VOLUME_ONLY)
    port = free_port()
    outcome = lab.deploy(port=port)
    assert outcome.port == port
    assert read_metadata(lab.name) == GatewayMetadata.local(lab.name, port)


# -- faults that live in the deploy -----------------------------------------------------------


def test_fault_container_id_hostname_leaves_the_identity_to_docker(lab: Lab) -> None:
    lab.deploy(faults=frozenset({Fault.CONTAINER_ID_HOSTNAME}))
    container = lab.inspect()
    assert container["Config"]["Hostname"] == container["Id"][:12]
    assert not any(e.startswith("OPENSHELL_NODE_NAME=") for e in container["Config"]["Env"])


def test_fault_no_restart_policy_creates_the_container_without_one(lab: Lab) -> None:
    lab.deploy(faults=frozenset({Fault.NO_RESTART_POLICY}))
    assert lab.inspect()["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")


def test_fault_pull_on_resume_fails_a_stopped_resume_without_contacting_a_registry(
    lab: Lab,
) -> None:
    lab.make(GatewayState.STOPPED)
    with pytest.raises(EngineError, match="pull access denied"):
        lab.deploy(faults=frozenset({Fault.PULL_ON_RESUME}))
    assert leftovers(lab.engine, lab.name) == ["volume"]
    assert lab.volume_file(MARKER) == b"kept\n"


# -- concurrency ------------------------------------------------------------------------------


def test_two_concurrent_deploys_for_one_name_end_with_one_container_and_no_error(
    lab: Lab,
) -> None:
    barrier = threading.Barrier(2)
    outcomes: list[DeployOutcome] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(lab.deploy())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(o.mode.value for o in outcomes) == ["already-running", "fresh"]
    ours = lab.engine.list_containers(label_filters=[f"{labels.GATEWAY}={lab.name}"])
    assert len(ours) == 1


def test_concurrent_container_creates_adopt_one_container(lab: Lab) -> None:
    ensure_network(lab.engine, lab.name, run_id=lab.run_id)
    ensure_volume(lab.engine, lab.name, run_id=lab.run_id)
    spec = gateway_container_spec(
        lab.engine,
        name=lab.name,
        image=lab.images.test1,
        port=lab.port,
        sandbox_image="openshell-sandbox:v1",
        run_id=lab.run_id,
    )
    barrier = threading.Barrier(4)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(ensure_container(lab.engine, spec))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 4
    assert len({container_id for container_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


# -- ownership --------------------------------------------------------------------------------


def test_look_alike_foreign_objects_survive_every_operation(lab: Lab) -> None:
    engine = lab.engine
    look_alikes = [f"{container_name(lab.name)}x", f"{container_name(lab.name)}-old"]
    for name in look_alikes:
        engine.create_network(name, labels={})
        engine.create_volume(name, labels={})
        engine.create_container(
            name=name,
            image=lab.base_image,
            command=["sleep", "600"],
            network=name,
            binds=[f"{name}:{STATE_DIR}"],
        )
        engine.start_container(name)
        lab.foreign("container", name)
        lab.foreign("network", name)
        lab.foreign("volume", name)
    before = {name: engine.inspect_container(name) for name in look_alikes}

    lab.deploy()
    stop(engine, lab.name)
    lab.deploy()
    lab.deploy(recreate=True)
    destroy(engine, lab.name)

    for name in look_alikes:
        container = engine.inspect_container(name)
        assert container is not None
        assert container["State"]["StartedAt"] == before[name]["State"]["StartedAt"]  # type: ignore[index]
        assert container["State"]["Running"]
        assert engine.inspect_network(name) is not None
        assert engine.inspect_volume(name) is not None


@pytest.mark.parametrize("kind", ["container", "volume", "network"])
def test_an_object_with_our_exact_name_but_not_our_labels_is_refused_and_untouched(
    lab: Lab, kind: str
) -> None:
    engine, name = lab.engine, container_name(lab.name)
    if kind == "network":
        engine.create_network(name, labels={})
    elif kind == "volume":
        engine.create_volume(name, labels={})
    else:
        engine.create_network(f"{name}-foreign", labels={})
        lab.foreign("network", f"{name}-foreign")
        engine.create_container(
            name=name, image=lab.base_image, command=["sleep", "600"], network=f"{name}-foreign"
        )
        engine.start_container(name)
    lab.foreign(kind, name)

    for operation in (
        lab.deploy,
        lambda: lab.deploy(recreate=True),
        lambda: stop(engine, lab.name),
        lambda: destroy(engine, lab.name),
    ):
        with pytest.raises(StateError, match=f"{kind} '{name}' exists but was not created"):
            operation()
    assert leftovers(engine, lab.name) == [kind]


class Untouchable:
    """An engine that fails the test when anything asks it for anything."""

    def __getattr__(self, attribute: str) -> Any:
        raise AssertionError(f"Docker was touched: Engine.{attribute}")


def test_a_name_of_60_characters_is_refused_before_docker_is_touched(
    engine: Engine, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "g" * 60
    untouchable: Any = Untouchable()
    for operation in (
        lambda: deploy(untouchable, DeployOptions(name=name)),
        lambda: stop(untouchable, name),
        lambda: destroy(untouchable, name),
    ):
        with pytest.raises(UsageError, match="too long"):
            operation()
    assert main(["gateway", "start", "--name", name, "--engine", cli_engine]) == 2
    assert "hostname" in capsys.readouterr().err
    assert leftovers(engine, name) == []


# -- the command line -------------------------------------------------------------------------


def test_cli_start_prints_upstream_lines_and_sets_the_active_gateway(
    lab: Lab, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gateway", "start", "--name", lab.name, "--port", str(lab.port)]
    argv += ["--image", lab.images.test1]
    assert main([*argv, "--engine", cli_engine]) == 0
    err = capsys.readouterr().err
    assert "[status] Deploying a new gateway" in err
    assert "✓ Gateway ready" in err
    assert f"Endpoint: https://127.0.0.1:{lab.port}" in err
    assert f"✓ Active gateway set to '{lab.name}'" in err
    assert read_active_gateway() == lab.name

    assert main([*argv, "--engine", cli_engine]) == 0
    assert f"✓ Gateway '{lab.name}' is already running." in capsys.readouterr().err

    assert main(["gateway", "stop", "--engine", cli_engine]) == 0, "the active gateway"
    assert f"✓ Gateway {lab.name} stopped." in capsys.readouterr().err
    assert lab.state() is GatewayState.STOPPED

    assert main(["gateway", "destroy", "--engine", cli_engine]) == 0
    assert f"✓ Gateway {lab.name} destroyed." in capsys.readouterr().err
    assert lab.state() is GatewayState.NONE
    assert read_active_gateway() is None


def test_cli_exit_codes_for_refusals(
    lab: Lab, cli_engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.make(GatewayState.CONTAINER_ONLY)
    assert main(["gateway", "start", "--name", lab.name, "--engine", cli_engine]) == 4
    assert "error:" in capsys.readouterr().err
    recreate = ["gateway", "start", "--name", lab.name, "--image", "nope:absent", "--recreate"]
    assert main([*recreate, "--engine", cli_engine]) == 1
    assert "not found locally" in capsys.readouterr().err
    assert lab.state() is GatewayState.CONTAINER_ONLY, "a missing image stops a recreate early"
