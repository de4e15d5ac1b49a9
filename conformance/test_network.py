"""Property 7: the gateway is attached only to its own network, under that network's current id."""

from __future__ import annotations

import pytest

from ._support import SURVIVING, Outcome

pytestmark = [
    pytest.mark.openshell_property(number=7),
    pytest.mark.openshell_traits(SURVIVING),
    pytest.mark.openshell_docker,
]


def test_the_gateway_is_attached_only_to_its_network_with_the_current_id(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    gateway = lifecycle.gateway
    doc = lifecycle.workload.inspect_gateway()
    attached = (doc.get("NetworkSettings") or {}).get("Networks") or {}
    assert set(attached) == {gateway.network_name}
    network = lifecycle.session.engine.inspect_network(gateway.network_name)
    assert network is not None, f"network {gateway.network_name} does not exist"
    assert attached[gateway.network_name]["NetworkID"] == network["Id"]
