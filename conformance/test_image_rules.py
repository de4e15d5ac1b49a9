"""Property 8: which image a resume uses, and that a missing one fails clearly and loses nothing."""

from __future__ import annotations

import pytest

from pytest_openshell import GatewayHandle, OpenShellSession

from ._support import NEW_CONTAINER, SAME_CONTAINER, SETTLED, Outcome

pytestmark = [pytest.mark.openshell_property(number=8), pytest.mark.openshell_docker]


@pytest.mark.openshell_traits(SAME_CONTAINER)
def test_a_stopped_container_resume_reuses_the_container_and_its_image(lifecycle: Outcome) -> None:
    lifecycle.verify("gateway container", "gateway image", within=SETTLED)


@pytest.mark.openshell_traits(NEW_CONTAINER)
def test_a_volume_only_resume_creates_the_container_from_the_requested_image(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    gateway, engine = lifecycle.gateway, lifecycle.session.engine
    doc = lifecycle.workload.inspect_gateway()
    assert doc["Id"] != lifecycle.workload.record.expected("gateway container")
    requested = lifecycle.run.image or gateway.spec.image
    image = engine.inspect_image(requested)
    assert image is not None, f"image {requested} is not on the engine"
    assert doc["Image"] == image["Id"], (
        f"the new container runs {doc['Config']['Image']}, not the requested {requested}"
    )
    volumes = {m.get("Name") for m in doc.get("Mounts") or [] if m.get("Type") == "volume"}
    assert gateway.volume_name in volumes


def test_a_missing_local_image_fails_with_a_clear_message_and_keeps_the_volume(
    openshell: OpenShellSession, openshell_fresh_gateway: GatewayHandle
) -> None:
    gateway, engine, driver = openshell_fresh_gateway, openshell.engine, openshell.driver
    engine.remove_container(gateway.container_name, force=True)
    missing = "openshell-gateway:not-built-anywhere"
    # Any error will do, from the library or from a CLI, as long as it names the problem.
    with pytest.raises(Exception, match=r"(?i)not found locally") as refused:
        driver.start(gateway, image=missing)
    assert missing in str(refused.value)
    assert engine.inspect_volume(gateway.volume_name) is not None
    assert engine.inspect_container(gateway.container_name) is None
    driver.start(gateway)  # the volume is still there to resume from
    assert openshell.driver_ready(gateway)
