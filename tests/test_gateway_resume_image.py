"""A gateway remembers, on its own volume, the image it last ran: with the real gateway images.

The scenario behind it: a gateway ran ``openshell-gateway:v2`` (store schema 2), its container went
away (a failed resume, ``docker rm``), and the user's ``gateway start --name X`` made the new
container from the default ``:v1``, which refuses a schema 2 store at every start: a restart loop.
Each test here deploys its own gateway (the real images, on the session engine) and drives
``gateway start`` the way a user does, through the command line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import (
    GATEWAY_IMAGE,
    SANDBOX_IMAGE,
    STATE,
    UPGRADE_IMAGE,
    GatewayUnderTest,
    lab_run,
)

from openshell_core.cli import main
from openshell_core.engine import Engine
from openshell_core.faults import Fault
from openshell_core.gateway.reconcile import ensure_container, gateway_container_spec
from openshell_core.images import ImageSet
from openshell_core.state_record import RECORD_FILE, STORE_SCHEMA_LABEL
from openshell_core.wire.contract import DEFAULT_TRANSPORT


@pytest.fixture
def gateway(
    engine: Engine,
    images: ImageSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[GatewayUnderTest]:
    """A gateway under test; the command line is pointed at its engine and host-side files."""
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)
    monkeypatch.delenv("OPENSHELL_FAULTS", raising=False)
    with lab_run(engine) as run_id:
        # What the command line makes carries the run's id too, so the run removes it.
        monkeypatch.setenv("OPENSHELL_RUN_ID", run_id)
        yield GatewayUnderTest(engine, f"img{run_id[:8]}", run_id, tmp_path / "config")


def start(gateway: GatewayUnderTest, *extra: str) -> int:
    """``pytest-openshell gateway start --name NAME [extra]`` on the test's engine."""
    return main(["-q", "gateway", "start", "--name", gateway.name, "--engine", "host", *extra])


#: The record of a gateway the upgrade image ran on (the transport as deployed: the default).
UPGRADE_RECORD = {"image": UPGRADE_IMAGE, "store_schema": 2, "transport": DEFAULT_TRANSPORT}


def record(gateway: GatewayUnderTest) -> dict[str, object]:
    return dict(json.loads(gateway.read_volume(RECORD_FILE)))


def running_image(gateway: GatewayUnderTest) -> str:
    found = gateway.engine.inspect_container(gateway.container)
    assert found is not None, "no gateway container"
    return str(found["Config"]["Image"])


def test_the_gateway_records_its_image_and_store_schema_on_its_volume(
    gateway: GatewayUnderTest,
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    assert record(gateway) == UPGRADE_RECORD


def test_gateway_images_say_which_store_schema_they_open(engine: Engine, images: ImageSet) -> None:
    opens = {
        ref: (engine.inspect_image(ref) or {})["Config"]["Labels"].get(STORE_SCHEMA_LABEL)
        for ref in (images.gateway, images.gateway_upgrade)
    }
    assert opens == {images.gateway: "1", images.gateway_upgrade: "2"}


def test_a_resume_without_image_comes_back_on_the_image_the_volume_recorded(
    gateway: GatewayUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    gateway.remove_container()  # docker rm -f: only the volume is left

    assert start(gateway) == 0, capsys.readouterr().err
    assert running_image(gateway) == UPGRADE_IMAGE
    with gateway.client() as client:
        client.health()


def test_a_resume_on_an_image_too_old_for_the_store_is_refused_before_a_container_is_made(
    gateway: GatewayUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    gateway.remove_container()
    capsys.readouterr()

    assert start(gateway, "--image", GATEWAY_IMAGE) == 4
    err = capsys.readouterr().err
    volume = gateway.container
    assert (
        f"error: cannot resume gateway {gateway.name!r} on image {GATEWAY_IMAGE!r}: the store on "
        f"volume {volume!r} is at schema version 2, last opened by {UPGRADE_IMAGE}, and "
        f"{GATEWAY_IMAGE} opens at most version 1; nothing was created"
    ) in err
    assert (
        f"hint: resume with the image that last ran on it: `pytest-openshell gateway start "
        f"--name {gateway.name} --image {UPGRADE_IMAGE}`"
    ) in err
    assert gateway.engine.inspect_container(gateway.container) is None
    assert record(gateway) == UPGRADE_RECORD


def test_a_volume_without_a_record_is_checked_by_its_stores_own_schema_version(
    gateway: GatewayUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    code, output = gateway.engine.exec_run(gateway.container, ["rm", f"{STATE}/{RECORD_FILE}"])
    assert code == 0, output  # as on a volume from before gateways wrote the record
    gateway.remove_container()
    capsys.readouterr()

    assert start(gateway, "--image", GATEWAY_IMAGE) == 4
    err = capsys.readouterr().err
    assert (
        f"is at schema version 2, and {GATEWAY_IMAGE} opens at most version 1; nothing was created"
    ) in err
    assert "hint: resume with an image that opens store schema version 2" in err
    assert gateway.engine.inspect_container(gateway.container) is None


def test_the_hint_of_a_failed_resume_names_a_command_that_resumes(
    gateway: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    gateway.engine.stop_container(gateway.container, timeout=10)
    capsys.readouterr()
    monkeypatch.setenv("OPENSHELL_FAULTS", "pull-on-resume")  # fails a resume, keeps the volume
    assert start(gateway) == 1
    monkeypatch.delenv("OPENSHELL_FAULTS")
    err = capsys.readouterr().err
    assert gateway.engine.inspect_container(gateway.container) is None, "the container went"
    command = re.search(r"`pytest-openshell (gateway start [^`]*)` resumes from it", err)
    assert command is not None, err
    assert command.group(1) == f"gateway start --name {gateway.name} --image {UPGRADE_IMAGE}"

    assert main(["-q", *command.group(1).split(), "--engine", "host"]) == 0, capsys.readouterr()
    assert running_image(gateway) == UPGRADE_IMAGE


def test_a_user_given_image_that_opens_the_store_wins_over_the_recorded_one(
    gateway: GatewayUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.deploy(image=GATEWAY_IMAGE)
    gateway.remove_container()

    assert start(gateway, "--image", UPGRADE_IMAGE) == 0, capsys.readouterr().err
    assert running_image(gateway) == UPGRADE_IMAGE
    assert record(gateway) == UPGRADE_RECORD


def test_an_image_that_refuses_the_store_leaves_the_record_as_it_was(
    gateway: GatewayUnderTest,
) -> None:
    gateway.deploy(image=UPGRADE_IMAGE)
    gateway.remove_container()
    # Past the host's check, as an older host or a hand-made container would go.
    spec = gateway_container_spec(
        gateway.engine,
        name=gateway.name,
        image=GATEWAY_IMAGE,
        port=gateway.port,
        sandbox_image=SANDBOX_IMAGE,
        run_id=gateway.run_id,
        faults=frozenset({Fault.NO_RESTART_POLICY}),
    )
    ensure_container(gateway.engine, spec)
    gateway.engine.start_container(gateway.container)
    assert gateway.engine.wait_container(gateway.container, timeout=120) != 0
    assert "newer than this gateway supports (1)" in "\n".join(gateway.logs())
    assert record(gateway) == UPGRADE_RECORD
