"""The gateway's configuration from its container environment."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from openshell_core.errors import UsageError
from openshell_core.faults import Fault
from openshell_core.server import __main__ as server_main
from openshell_core.server import healthcheck
from openshell_core.server.compute_docker import DockerSettings
from openshell_core.server.compute_kubernetes import KubernetesSettings
from openshell_core.server.config import LISTEN_PORT, ServerConfig

BASE = {
    "OPENSHELL_GATEWAY_NAME": "demo",
    "DOCKER_HOST": "unix:///run/openshell-engine/docker.sock",
}


def test_the_environment_contract_is_read():
    config = ServerConfig.from_env(
        {
            **BASE,
            "OPENSHELL_NODE_NAME": "openshell-demo",
            "OPENSHELL_NETWORK": "openshell-cluster-demo",
            "OPENSHELL_SANDBOX_IMAGE": "openshell-sandbox:v1",
            "OPENSHELL_EXTRA_SANS": "gw.example, 10.0.0.5",
            "OPENSHELL_GATEWAY_PORT": "8080",
            "OPENSHELL_RUN_ID": "abc",
            "OPENSHELL_GATEWAY_VARIANT": "v2",
        }
    )
    assert (config.node_name, config.node_name_source) == ("openshell-demo", "env")
    assert config.gateway_port == 8080
    assert config.run_id == "abc"
    assert config.schema == 2
    assert config.server_sans == (
        "openshell-cluster-demo",
        "openshell-demo",
        "gw.example",
        "10.0.0.5",
    )
    assert str(config.store_path) == "/var/lib/openshell/openshell.db"


def test_without_a_pinned_node_name_the_hostname_is_the_identity():
    config = ServerConfig.from_env(BASE)
    assert (config.node_name, config.node_name_source) == (socket.gethostname(), "hostname")


def test_fault_container_id_hostname_prefers_the_hostname_to_the_pinned_name():
    config = ServerConfig.from_env(
        {
            **BASE,
            "OPENSHELL_NODE_NAME": "openshell-demo",
            "OPENSHELL_FAULTS": "container-id-hostname",
        }
    )
    assert config.node_name == socket.gethostname()


def test_fault_forget_sandboxes_on_start_keeps_the_store_off_the_volume():
    config = ServerConfig.from_env({**BASE, "OPENSHELL_FAULTS": "forget-sandboxes-on-start"})
    assert not config.store_path.is_relative_to(config.state_dir)


def test_fault_relabel_on_upgrade_only_bites_in_the_upgrade_image():
    env = {**BASE, "OPENSHELL_FAULTS": "relabel-on-upgrade"}
    assert not ServerConfig.from_env(env).has(Fault.RELABEL_ON_UPGRADE)
    upgraded = ServerConfig.from_env({**env, "OPENSHELL_GATEWAY_VARIANT": "v2"})
    assert upgraded.has(Fault.RELABEL_ON_UPGRADE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OPENSHELL_GATEWAY_NAME": ""}, "OPENSHELL_GATEWAY_NAME"),
        ({"DOCKER_HOST": ""}, "DOCKER_HOST"),
        ({"OPENSHELL_GATEWAY_PORT": "http"}, "not a port"),
        ({"OPENSHELL_FAULTS": "no-such-fault"}, "unknown fault"),
    ],
)
def test_a_broken_environment_is_refused_with_what_is_wrong(change, message):
    with pytest.raises(UsageError, match=message):
        ServerConfig.from_env({**BASE, **change})


def test_the_health_check_knows_the_servers_port_without_importing_its_configuration() -> None:
    assert healthcheck.LISTEN_PORT == LISTEN_PORT


def test_the_health_check_names_what_is_missing(tmp_path: Path) -> None:
    found = healthcheck.problems(
        {"OPENSHELL_STATE_DIR": str(tmp_path / "state"), "OPENSHELL_RUN_DIR": str(tmp_path / "run")}
    )
    assert "the server has not reported ready" in found
    assert "no SSH handshake secret" in found
    assert any(problem.startswith("PKI files missing: ca.crt") for problem in found)


def test_the_docker_compute_driver_is_the_default_with_its_own_settings() -> None:
    config = ServerConfig.from_env(BASE)
    assert config.compute == DockerSettings(
        host="unix:///run/openshell-engine/docker.sock", network="openshell-cluster-demo"
    )
    assert config.compute.driver == "docker"


def test_the_compute_driver_is_picked_by_name() -> None:
    config = ServerConfig.from_env({**BASE, "OPENSHELL_COMPUTE_DRIVER": "docker"})
    assert isinstance(config.compute, DockerSettings)


def test_an_unknown_compute_driver_is_a_configuration_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError) as refused:
        ServerConfig.from_env({**BASE, "OPENSHELL_COMPUTE_DRIVER": "nomad"})
    assert refused.value.message == (
        "OPENSHELL_COMPUTE_DRIVER='nomad' names no compute driver this gateway has"
    )
    assert refused.value.hint == (
        "set it to one of: docker, kubernetes (or leave it unset for docker)"
    )


def test_the_kubernetes_compute_driver_is_picked_with_its_namespace_api_and_gateway_id() -> None:
    config = ServerConfig.from_env(
        {
            "OPENSHELL_GATEWAY_NAME": "demo",
            "OPENSHELL_COMPUTE_DRIVER": "kubernetes",
            "OPENSHELL_KUBE_NAMESPACE": "openshell",
            "OPENSHELL_KUBE_API": "http://127.0.0.1:8001",
            "OPENSHELL_KUBE_GATEWAY_ID": "gw-7",
        }
    )
    assert config.compute == KubernetesSettings(
        namespace="openshell", api="http://127.0.0.1:8001", gateway_id="gw-7"
    )
    assert config.compute.driver == "kubernetes"


def test_the_kubernetes_compute_driver_without_a_namespace_is_a_configuration_error() -> None:
    with pytest.raises(UsageError) as refused:
        ServerConfig.from_env(
            {"OPENSHELL_GATEWAY_NAME": "demo", "OPENSHELL_COMPUTE_DRIVER": "kubernetes"}
        )
    assert refused.value.message == (
        "OPENSHELL_KUBE_NAMESPACE is not set and the gateway runs in no pod: set it to the "
        "namespace of the gateway's sandboxes"
    )


def test_an_unknown_compute_driver_stops_the_gateway_with_the_usage_exit_code(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in {**BASE, "OPENSHELL_COMPUTE_DRIVER": "nomad"}.items():
        monkeypatch.setenv(name, value)
    assert server_main.main() == server_main.EXIT_USAGE
    assert "names no compute driver this gateway has" in caplog.text
