"""The gateway's store across image versions: v2 migrates v1's data, and v1 refuses v2's store.

The two tests share one gateway volume and run in file order: v1 writes, v2 upgrades, v1 is then
refused without touching the upgraded store (by the host, before a container is made; the
server's own refusal is in ``test_gateway_resume_image.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from server_support import GATEWAY_IMAGE, UPGRADE_IMAGE, GatewayUnderTest, lab_run

from openshell_core.engine import Engine
from openshell_core.errors import StateError
from openshell_core.images import ImageSet

_SCHEMA = (
    "import sqlite3; print(sqlite3.connect('file:/var/lib/openshell/openshell.db?mode=ro', "
    "uri=True).execute('PRAGMA user_version').fetchone()[0])"
)


@pytest.fixture(scope="module")
def gateway(
    engine: Engine, images: ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayUnderTest]:
    with lab_run(engine) as run_id:
        lab = GatewayUnderTest(
            engine, f"upg{run_id[:8]}", run_id, tmp_path_factory.mktemp("config")
        )
        lab.deploy(image=GATEWAY_IMAGE)
        yield lab


def test_an_image_upgrade_migrates_the_store_and_keeps_every_sandbox(gateway: GatewayUnderTest):
    with gateway.client() as client:
        client.create_sandbox("labelled", labels={"team": "red"})
        before = client.wait_ready("labelled", timeout=120)
    assert gateway.python(_SCHEMA).strip() == "1"

    gateway.remove_container()
    gateway.deploy(image=UPGRADE_IMAGE)

    assert gateway.python(_SCHEMA).strip() == "2"
    with gateway.client() as client:
        after = client.wait_ready("labelled", timeout=120)
    assert (after.id, dict(after.labels)) == (before.id, {"team": "red"})


def test_an_older_image_is_refused_for_an_upgraded_store_before_a_container_is_made(
    gateway: GatewayUnderTest,
):
    gateway.engine.stop_container(gateway.container, timeout=10)
    before = hashlib.sha256(gateway.read("openshell.db")).hexdigest()
    gateway.remove_container()

    with pytest.raises(StateError) as refused:
        gateway.deploy(image=GATEWAY_IMAGE)

    assert "is at schema version 2" in refused.value.message
    assert f"--image {UPGRADE_IMAGE}" in str(refused.value.hint)
    assert gateway.engine.inspect_container(gateway.container) is None
    assert hashlib.sha256(gateway.read_volume("openshell.db")).hexdigest() == before
