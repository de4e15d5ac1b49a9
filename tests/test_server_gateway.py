"""The reference gateway on a real engine, with the real images: the official SDK's round trip,
mutual TLS, sandboxes that come back, and state that survives the gateway's container.

One gateway is shared by the tests of this module, in file order; the last ones disrupt it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from openshell import SandboxClient, TlsConfig, WorkspaceClient
from server_support import GatewayUnderTest, lab_run, wait_for

from openshell_core import pki
from openshell_core.cli import main
from openshell_core.engine import Engine
from openshell_core.host.api_client import GatewayClient, GatewayRpcError
from openshell_core.images import ImageSet
from openshell_core.server.compute_docker import container_name, volume_name

WORKSPACE = "default"


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


@pytest.fixture(scope="module")
def gateway(engine: Engine, images: ImageSet, config_home: Path) -> Iterator[GatewayUnderTest]:
    with lab_run(engine) as run_id:
        lab = GatewayUnderTest(engine, f"srv{run_id[:8]}", run_id, config_home)
        lab.deploy()
        yield lab


@pytest.fixture
def sdk_env(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the SDK (and our client) at the module's gateway through the host-side files."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)


@pytest.fixture
def client(gateway: GatewayUnderTest) -> Iterator[GatewayClient]:
    with gateway.client() as made:
        yield made


def _ready(client: GatewayClient, name: str) -> str:
    """Create a sandbox, wait until it is ready, return its id."""
    client.create_sandbox(name)
    return client.wait_ready(name, timeout=120).id


def test_the_official_sdk_drives_a_sandbox_through_its_lifecycle(gateway, sdk_env):
    with SandboxClient.from_active_cluster() as sdk:
        assert sdk.health().version
        created = sdk.create(workspace=WORKSPACE, name="sdk-round-trip")
        ready = sdk.wait_ready("sdk-round-trip", workspace=WORKSPACE, timeout_seconds=120)
        assert ready.id == created.id
        assert ready.host_key_fingerprint.startswith("SHA256:")

        result = sdk.exec(
            "sdk-round-trip",
            ["sh", "-c", "echo out; echo err >&2; exit 3"],
            workspace=WORKSPACE,
        )
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")

        assert created.id in sdk.list_ids(workspace=WORKSPACE)
        assert sdk.get("sdk-round-trip", workspace=WORKSPACE).id == created.id

        sdk.stop("sdk-round-trip", workspace=WORKSPACE)
        sdk.wait_stopped("sdk-round-trip", workspace=WORKSPACE, timeout_seconds=60)
        sdk.start("sdk-round-trip", workspace=WORKSPACE)
        again = sdk.wait_ready("sdk-round-trip", workspace=WORKSPACE, timeout_seconds=120)
        assert again.id == created.id

        sdk.delete("sdk-round-trip", workspace=WORKSPACE)
        sdk.wait_deleted("sdk-round-trip", workspace=WORKSPACE, timeout_seconds=60)
    assert gateway.engine.inspect_container(container_name(created.id)) is None
    assert gateway.engine.inspect_volume(volume_name(created.id)) is None


def test_a_client_without_a_certificate_is_refused(gateway):
    mtls = gateway.gateway_dir / "mtls"
    with (
        SandboxClient(
            f"127.0.0.1:{gateway.port}", tls=TlsConfig(ca_path=mtls / "ca.crt"), timeout=10
        ) as anonymous,
        pytest.raises(grpc.RpcError) as refused,
    ):
        anonymous.health()
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_another_ca_is_refused(gateway, tmp_path):
    stranger = pki.generate_pki()
    (tmp_path / "tls.crt").write_text(stranger.client_cert)
    (tmp_path / "tls.key").write_text(stranger.client_key)
    tls = TlsConfig(
        ca_path=gateway.gateway_dir / "mtls" / "ca.crt",
        cert_path=tmp_path / "tls.crt",
        key_path=tmp_path / "tls.key",
    )
    with (
        SandboxClient(f"127.0.0.1:{gateway.port}", tls=tls, timeout=10) as impostor,
        pytest.raises(grpc.RpcError) as refused,
    ):
        impostor.health()
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_methods_outside_the_sandbox_lifecycle_answer_unimplemented(gateway, sdk_env):
    with SandboxClient.from_active_cluster() as sdk, pytest.raises(grpc.RpcError) as refused:
        WorkspaceClient.from_sandbox_client(sdk).list_all()
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_the_cli_creates_lists_runs_in_connects_to_and_deletes_a_sandbox(gateway, sdk_env, capfd):
    assert main(["-q", "sandbox", "create", "cli-made"]) == 0
    assert "READY" in capfd.readouterr().out

    assert main(["-q", "sandbox", "list"]) == 0
    assert "cli-made" in capfd.readouterr().out

    assert main(["-q", "sandbox", "get", "cli-made", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["phase"] == "READY"

    assert main(["-q", "sandbox", "exec", "cli-made", "--", "sh", "-c", "echo hi; exit 7"]) == 7
    assert capfd.readouterr().out == "hi\n"

    assert main(["-q", "sandbox", "connect", "cli-made", "--", "cat", "/sandbox/README.md"]) == 0
    assert capfd.readouterr().out == "Welcome to an OpenShell sandbox.\n"

    assert main(["-q", "sandbox", "delete", "cli-made"]) == 0
    capfd.readouterr()
    assert main(["-q", "sandbox", "get", "cli-made"]) == 1
    assert "not found" in capfd.readouterr().err


def test_cli_sandbox_create_with_a_bad_name_shows_the_gateways_rule(gateway, sdk_env, capfd):
    assert main(["-q", "sandbox", "create", "Bad_Name"]) == 2
    err = capfd.readouterr().err
    assert "error: create sandbox: invalid sandbox name 'Bad_Name'\n" in err
    assert (
        "  hint: use 1-63 lowercase letters, digits and '-', starting and ending with a letter "
        "or digit\n"
    ) in err


def test_cli_sandbox_connect_runs_a_command_in_the_workspace(gateway, sdk_env, capfd):
    assert main(["-q", "sandbox", "create", "cwd-check"]) == 0
    capfd.readouterr()
    assert main(["-q", "sandbox", "connect", "cwd-check", "--", "pwd"]) == 0
    assert capfd.readouterr().out == "/sandbox\n"
    assert main(["-q", "sandbox", "delete", "cwd-check"]) == 0


def test_a_sandbox_container_removed_behind_the_gateways_back_comes_back_with_its_workspace(
    gateway, client
):
    sandbox_id = _ready(client, "rescheduled")
    written = client.exec("rescheduled", ["sh", "-c", "echo kept > /sandbox/marker"])
    assert written.exit_code == 0
    first = gateway.engine.inspect_container(container_name(sandbox_id))
    assert first is not None

    gateway.engine.remove_container(container_name(sandbox_id))

    def recreated() -> bool:
        found = gateway.engine.inspect_container(container_name(sandbox_id))
        return found is not None and found["Id"] != first["Id"]

    wait_for(recreated, what="the sandbox container to be made again")
    assert client.wait_ready("rescheduled", timeout=120).id == sandbox_id
    assert client.exec("rescheduled", ["cat", "/sandbox/marker"]).stdout == b"kept\n"


def test_a_sandbox_container_stopped_out_of_band_is_started_again(gateway, client):
    sandbox_id = _ready(client, "restarted")
    gateway.engine.stop_container(container_name(sandbox_id), timeout=5)

    def running() -> bool:
        found = gateway.engine.inspect_container(container_name(sandbox_id)) or {}
        return bool((found.get("State") or {}).get("Running"))

    wait_for(running, what="the sandbox container to run again")
    assert client.wait_ready("restarted", timeout=120).restart_count >= 1


def test_a_sandbox_taken_off_the_gateway_network_is_attached_again(gateway, client):
    sandbox_id = _ready(client, "detached")
    gateway.engine.disconnect_network(gateway.container, container_name(sandbox_id))

    def attached() -> bool:
        found = gateway.engine.inspect_container(container_name(sandbox_id)) or {}
        return gateway.container in ((found.get("NetworkSettings") or {}).get("Networks") or {})

    wait_for(attached, what="the sandbox to be attached again")
    client.wait_ready("detached", timeout=120)
    assert client.exec("detached", ["true"]).exit_code == 0


#: Moves the supervisor's package away inside a sandbox container: every start fails from then on.
BREAK_SUPERVISOR = (
    "set -e; d=$(python3 -c 'import openshell_core.sandbox as m, os; "
    'print(os.path.dirname(m.__file__))\'); mv "$d" "$d.broken"'
)


def _phase_is(client: GatewayClient, name: str, phase: str) -> bool:
    return client.get_sandbox(name).phase == phase


def test_a_sandbox_whose_container_fails_at_every_start_goes_to_error_and_a_start_mends_it(
    gateway, client
):
    sandbox_id = _ready(client, "crashing")
    client.exec("crashing", ["sh", "-c", "echo mine > /sandbox/mine.txt"])
    assert client.exec("crashing", ["sh", "-c", BREAK_SUPERVISOR]).exit_code == 0
    with contextlib.suppress(GatewayRpcError):  # the command ends with its supervisor
        client.exec("crashing", ["kill", "-TERM", "1"])

    wait_for(lambda: _phase_is(client, "crashing", "ERROR"), what="the sandbox in ERROR")
    reason = client.get_sandbox("crashing").reason
    assert "keeps failing" in reason and "No module named openshell_core.sandbox" in reason
    assert gateway.engine.inspect_container(container_name(sandbox_id)) is None
    assert gateway.engine.inspect_volume(volume_name(sandbox_id)) is not None

    client.start_sandbox("crashing")
    client.wait_ready("crashing", timeout=120)
    assert client.exec("crashing", ["cat", "/sandbox/mine.txt"]).stdout == b"mine\n"


def test_the_sandboxs_own_command_runs_at_every_start_of_its_container(gateway, client):
    command = ["sh", "-c", "echo start >> /sandbox/starts.log; exec sleep 2147483647"]
    sandbox_id = client.create_sandbox("commanded", command=command).id
    client.wait_ready("commanded", timeout=120)

    def starts() -> list[str]:
        try:
            read = client.exec("commanded", ["sh", "-c", "cat /sandbox/starts.log || true"])
        except GatewayRpcError:  # not Ready (again) yet
            return []
        return read.stdout.decode().split()

    wait_for(lambda: starts() == ["start"], what="the command's first start")
    gateway.engine.stop_container(container_name(sandbox_id), timeout=5)
    wait_for(lambda: starts() == ["start"] * 2, what="the command's second start")


def test_a_sandbox_stopped_by_its_user_stays_stopped(gateway, client):
    _ready(client, "parked")
    client.stop_sandbox("parked")
    gateway.restart()
    with gateway.client() as after:
        assert after.get_sandbox("parked").phase == "STOPPED"


def test_a_killed_gateway_comes_back_with_its_sandboxes_secret_and_pki(gateway, client):
    sandbox_id = _ready(client, "survivor")
    client.exec("survivor", ["sh", "-c", "echo before > /sandbox/survivor"])
    before = {
        "secret": hashlib.sha256(gateway.read("secrets/ssh-handshake")).hexdigest(),
        "pki": {name: gateway.read(f"pki/{name}") for name in ("ca.crt", "server.crt")},
        "sandboxes": {info.id for info in client.list_sandboxes()},
    }

    gateway.kill()
    gateway.start()

    with gateway.client() as after:  # the host-side mTLS files still authenticate
        assert {info.id for info in after.list_sandboxes()} == before["sandboxes"]
        assert after.wait_ready("survivor", timeout=120).id == sandbox_id
        assert after.exec("survivor", ["cat", "/sandbox/survivor"]).stdout == b"before\n"
    assert hashlib.sha256(gateway.read("secrets/ssh-handshake")).hexdigest() == before["secret"]
    assert {name: gateway.read(f"pki/{name}") for name in ("ca.crt", "server.crt")} == before["pki"]


def test_after_a_kill_and_a_new_network_every_sandbox_is_reachable_again(gateway, client):
    _ready(client, "networked")
    client.create_sandbox("dormant")
    client.wait_ready("dormant", timeout=120)
    client.stop_sandbox("dormant")
    gateway.kill()
    network = gateway.engine.inspect_network(gateway.container)
    assert network is not None
    for endpoint in network.get("Containers") or {}:
        gateway.engine.disconnect_network(gateway.container, endpoint)
    gateway.engine.remove_network(gateway.container)

    gateway.start()

    with gateway.client() as after:
        after.wait_ready("networked", timeout=120)
        assert after.exec("networked", ["true"]).exit_code == 0
        after.start_sandbox("dormant")  # its container still names the removed network
        after.wait_ready("dormant", timeout=120)
        assert after.exec("dormant", ["true"]).exit_code == 0


def test_gateway_start_after_the_daemon_stopped_every_container_waits_for_the_sandboxes(
    gateway, client, sdk_env, capfd, monkeypatch
):
    _ready(client, "returning")
    ready = {info.name: info.id for info in client.list_sandboxes() if info.phase == "READY"}
    # What a dockerd without live-restore does, as it starts, to the containers that outlived
    # the daemon before it (docker-daemon-kill on a system Docker): docker stop.
    gateway.engine.stop_container(gateway.container, timeout=10)
    for sandbox_id in ready.values():
        gateway.engine.stop_container(container_name(sandbox_id), timeout=10)
    monkeypatch.setenv("DOCKER_HOST", gateway.engine.host)

    assert main(["gateway", "start", "--name", gateway.name, "--engine", "host"]) == 0

    with gateway.client() as after:  # at once: "ready" means a connect now works
        phases = {info.name: info.phase for info in after.list_sandboxes() if info.name in ready}
    assert phases == dict.fromkeys(ready, "READY")
    assert f"✓ {len(ready)} sandbox(es) back: " in capfd.readouterr().err


def test_sandbox_create_brings_a_stopped_gateway_back_without_its_host_files(
    gateway, client, sdk_env, capfd
):
    before = {info.id for info in client.list_sandboxes()}
    gateway.engine.stop_container(gateway.container, timeout=10)
    shutil.rmtree(gateway.gateway_dir)

    assert main(["-q", "sandbox", "create", "bootstrapped", "--gateway", gateway.name]) == 0
    assert "READY" in capfd.readouterr().out

    with gateway.client() as after:
        assert before < {info.id for info in after.list_sandboxes()}
