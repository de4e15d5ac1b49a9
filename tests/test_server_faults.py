"""Each server-side fault switch re-creates its upstream failure on a real gateway.

The same scenarios without the switch are the behaviours ``test_server_gateway.py`` and
``test_server_upgrade.py`` check; here each one goes wrong the way it did upstream. Every test
runs its own gateway: faults are read when a gateway starts.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_support import (
    UPGRADE_IMAGE,
    GatewayUnderTest,
    lab_run,
    remove_lab_objects,
    wait_for,
)

from openshell_core.engine import Engine
from openshell_core.host.api_client import GatewayClient, GatewayRpcError
from openshell_core.images import ImageSet
from openshell_core.server.compute_docker import container_name, volume_name

Lab = Callable[[str], GatewayUnderTest]


@pytest.fixture(scope="module")
def run_id(engine: Engine, images: ImageSet) -> Iterator[str]:
    with lab_run(engine) as made:
        yield made


@pytest.fixture
def lab(engine: Engine, run_id: str, tmp_path: Path) -> Iterator[Lab]:
    """Deploys a gateway with the given faults switched on; removes it afterwards."""

    def deploy(faults: str) -> GatewayUnderTest:
        gateway = GatewayUnderTest(engine, f"flt{uuid.uuid4().hex[:8]}", run_id, tmp_path)
        gateway.deploy(faults=faults)
        return gateway

    yield deploy
    remove_lab_objects(engine, run_id)


def _ready(client: GatewayClient, name: str) -> str:
    client.create_sandbox(name)
    return client.wait_ready(name, timeout=120).id


def _phase(gateway: GatewayUnderTest, name: str) -> Callable[[], str]:
    def read() -> str:
        with gateway.client() as client:
            return client.get_sandbox(name).phase

    return read


def test_regenerate_handshake_secret_locks_old_sandboxes_out(lab: Lab):
    gateway = lab("regenerate-handshake-secret")
    with gateway.client() as client:
        _ready(client, "old")
    before = gateway.read("secrets/ssh-handshake")

    gateway.restart()

    assert gateway.read("secrets/ssh-handshake") != before
    with gateway.client() as client:
        client.wait_ready("old", timeout=120)
        with pytest.raises(GatewayRpcError, match="handshake"):
            client.exec("old", ["true"])


def test_container_id_hostname_purges_the_old_containers_sandboxes(lab: Lab):
    gateway = lab("container-id-hostname")
    with gateway.client() as client:
        sandbox_id = _ready(client, "old")

    gateway.remove_container()
    gateway.deploy()

    assert wait_for(lambda: _phase(gateway, "old")() == "ERROR", what="the sandbox to fail")
    assert gateway.engine.inspect_volume(volume_name(sandbox_id)) is None


def test_no_workspace_volume_loses_the_workspace_with_the_container(lab: Lab):
    gateway = lab("no-workspace-volume")
    with gateway.client() as client:
        sandbox_id = _ready(client, "layered")
        assert gateway.engine.inspect_volume(volume_name(sandbox_id)) is None
        client.exec("layered", ["sh", "-c", "echo kept > /sandbox/marker"])

        gateway.engine.remove_container(container_name(sandbox_id))
        wait_for(
            lambda: gateway.engine.inspect_container(container_name(sandbox_id)),
            what="the sandbox container to be made again",
        )
        client.wait_ready("layered", timeout=120)
        assert client.exec("layered", ["cat", "/sandbox/marker"]).exit_code != 0


def test_reseed_workspace_overwrites_the_users_changes_at_start(lab: Lab):
    gateway = lab("reseed-workspace")
    with gateway.client() as client:
        _ready(client, "reseeded")
        client.exec("reseeded", ["sh", "-c", "echo mine > /sandbox/README.md"])

        client.stop_sandbox("reseeded")
        client.start_sandbox("reseeded")
        client.wait_ready("reseeded", timeout=120)

        readme = client.exec("reseeded", ["cat", "/sandbox/README.md"]).stdout
    assert readme == b"Welcome to an OpenShell sandbox.\n"


def test_rotate_pki_on_resume_locks_the_host_side_files_out(lab: Lab, tmp_path: Path):
    gateway = lab("rotate-pki-on-resume")
    before = gateway.read("pki/ca.crt")
    kept = shutil.copytree(gateway.gateway_dir / "mtls", tmp_path / "kept-mtls")

    gateway.restart()

    assert gateway.read("pki/ca.crt") != before
    with gateway.client(kept) as stale, pytest.raises(GatewayRpcError) as refused:
        stale.health()
    assert refused.value.code == "UNAVAILABLE"


def test_forget_sandboxes_on_start_loses_every_sandbox_record(lab: Lab):
    gateway = lab("forget-sandboxes-on-start")
    with gateway.client() as client:
        sandbox_id = _ready(client, "forgotten")

    gateway.restart()

    with gateway.client() as client:
        assert client.list_sandboxes() == []
    assert gateway.engine.inspect_container(container_name(sandbox_id)) is not None


def test_relabel_on_upgrade_purges_existing_sandboxes(lab: Lab):
    gateway = lab("relabel-on-upgrade")
    with gateway.client() as client:
        sandbox_id = _ready(client, "relabelled")

    gateway.remove_container()
    gateway.deploy(image=UPGRADE_IMAGE, faults="relabel-on-upgrade")

    # The purge is the reconciler's, which starts once the API answers: it takes a moment.
    def purged() -> bool:
        with gateway.client() as client:
            return client.list_sandboxes() == []

    assert wait_for(purged, what="the sandbox to be purged")
    assert gateway.engine.inspect_container(container_name(sandbox_id)) is None


def test_error_is_terminal_leaves_an_out_of_band_stop_in_error(lab: Lab):
    gateway = lab("error-is-terminal")
    with gateway.client() as client:
        sandbox_id = _ready(client, "stuck")

    gateway.engine.stop_container(container_name(sandbox_id), timeout=5)

    assert wait_for(lambda: _phase(gateway, "stuck")() == "ERROR", what="the sandbox to fail")
    gateway.restart()
    assert _phase(gateway, "stuck")() == "ERROR"
    found = gateway.engine.inspect_container(container_name(sandbox_id)) or {}
    assert not (found.get("State") or {}).get("Running")
