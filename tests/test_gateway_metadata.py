"""Host-side gateway files: metadata.json, mtls/ and active_gateway, in upstream's layout."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from openshell.sandbox import SandboxClient

from openshell_core.errors import StateError
from openshell_core.host.metadata import (
    GatewayMetadata,
    MetadataError,
    MtlsFiles,
    clear_active_gateway,
    gateway_lock,
    metadata_path,
    read_active_gateway,
    read_metadata,
    remove_gateway_files,
    set_active_gateway,
    write_metadata,
    write_mtls,
)

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)
    return home


def test_metadata_is_written_where_and_as_upstream_reads_it(config_home: Path) -> None:
    path = write_metadata(GatewayMetadata.local("demo", 8082))
    assert path == config_home / "openshell" / "gateways" / "demo" / "metadata.json"
    assert json.loads(path.read_text()) == {
        "name": "demo",
        "gateway_endpoint": "https://127.0.0.1:8082",
        "is_remote": False,
        "gateway_port": 8082,
    }


def test_metadata_round_trips() -> None:
    written = GatewayMetadata.local("demo", 9000, gateway_host="gw.example")
    write_metadata(written)
    assert read_metadata("demo") == written


def test_absent_metadata_reads_as_none() -> None:
    assert read_metadata("nothing-here") is None


def test_upstream_aliases_and_unknown_fields_are_accepted() -> None:
    path = metadata_path("demo")
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "name": "demo",
                "gateway_endpoint": "https://127.0.0.1:8080",
                "is_remote": False,
                "gateway_port": 8080,
                "cf_team_domain": "team.example",
                "a_field_from_a_newer_cli": 1,
            }
        )
    )
    found = read_metadata("demo")
    assert found is not None
    assert found.edge_team_domain == "team.example"


def test_half_written_metadata_is_a_clear_state_error() -> None:
    path = metadata_path("demo")
    path.parent.mkdir(parents=True)
    path.write_text('{"name": "demo", "gateway_endp')
    with pytest.raises(MetadataError) as failure:
        read_metadata("demo")
    assert isinstance(failure.value, StateError)
    assert str(path) in failure.value.message
    assert "not valid JSON" in failure.value.message
    assert "volume is not touched" in (failure.value.hint or "")


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"name": "demo"}',
        '{"name": "demo", "gateway_endpoint": "https://127.0.0.1:1", "gateway_port": "80"}',
        '{"name": "other", "gateway_endpoint": "https://127.0.0.1:1"}',
        '{"name": "demo", "gateway_endpoint": "https://127.0.0.1:1", "is_remote": "no"}',
    ],
)
def test_metadata_with_wrong_shape_is_a_metadata_error(content: str) -> None:
    path = metadata_path("demo")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(MetadataError):
        read_metadata("demo")


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("https://127.0.0.1:8080", None),
        ("https://localhost:8080", None),
        ("https://[::1]:8080", None),
        ("https://host.docker.internal:8082", "host.docker.internal"),
        ("http://gw.example:80", "gw.example"),
        ("https://gw.example", "gw.example"),
    ],
)
def test_gateway_host_drops_scheme_port_and_loopback(endpoint: str, host: str | None) -> None:
    assert GatewayMetadata("demo", endpoint).gateway_host() == host


def test_mtls_files_are_private_and_complete(config_home: Path) -> None:
    files = write_mtls("demo", ca_cert=CERT, cert=CERT, key=KEY)
    directory = config_home / "openshell" / "gateways" / "demo" / "mtls"
    assert files == MtlsFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.key.read_bytes() == KEY
    assert sorted(p.name for p in directory.parent.iterdir()) == ["mtls"]


def test_mtls_replacement_swaps_the_whole_directory() -> None:
    write_mtls("demo", ca_cert=CERT, cert=CERT, key=KEY)
    other = CERT.replace(b"MIIB", b"MIIC")
    files = write_mtls("demo", ca_cert=other, cert=other, key=KEY)
    assert files.ca_cert.read_bytes() == other
    assert sorted(p.name for p in files.ca_cert.parent.parent.iterdir()) == ["mtls"]


def test_empty_mtls_material_is_refused_and_the_old_files_stay() -> None:
    files = write_mtls("demo", ca_cert=CERT, cert=CERT, key=KEY)
    with pytest.raises(StateError, match=r"tls\.key"):
        write_mtls("demo", ca_cert=CERT, cert=CERT, key=b"")
    assert files.key.read_bytes() == KEY


def test_active_gateway_is_set_read_and_cleared_only_for_its_own_name(config_home: Path) -> None:
    set_active_gateway("demo")
    assert (config_home / "openshell" / "active_gateway").read_text().strip() == "demo"
    assert read_active_gateway() == "demo"
    assert not clear_active_gateway("other")
    assert read_active_gateway() == "demo"
    assert clear_active_gateway("demo")
    assert read_active_gateway() is None


def test_removing_gateway_files_leaves_other_gateways_alone() -> None:
    write_metadata(GatewayMetadata.local("demo", 8080))
    write_metadata(GatewayMetadata.local("other", 8081))
    assert remove_gateway_files("demo")
    assert read_metadata("demo") is None
    assert read_metadata("other") is not None
    assert not remove_gateway_files("demo")


def test_the_lock_file_lives_beside_not_inside_the_gateway_directory(config_home: Path) -> None:
    with gateway_lock("demo"):
        remove_gateway_files("demo")
        assert (config_home / "openshell" / "gateways" / ".demo.lock").exists()


def test_the_official_sdk_reads_what_deploy_writes(config_home: Path) -> None:
    write_metadata(GatewayMetadata.local("demo", 8443))
    write_mtls("demo", ca_cert=CERT, cert=CERT, key=KEY)
    set_active_gateway("demo")
    client = SandboxClient.from_active_cluster()
    try:
        assert client._endpoint == "127.0.0.1:8443"
        assert client._cluster_name == "demo"
    finally:
        client.close()
