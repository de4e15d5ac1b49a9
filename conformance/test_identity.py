"""Property 6: the node identity is stable, and the new container adopts what the old one owned."""

from __future__ import annotations

import pytest

from openshell_core.gateway.names import node_name
from pytest_openshell import Ability, SandboxFate

from ._support import SANDBOXES_ADOPTED, SETTLED, SURVIVING, Outcome

pytestmark = pytest.mark.openshell_property(number=6)


@pytest.mark.openshell_traits(SURVIVING)
@pytest.mark.openshell_docker
def test_hostname_and_node_name_are_the_gateways_node_name_unchanged(lifecycle: Outcome) -> None:
    expected = node_name(lifecycle.gateway.name)
    before = lifecycle.workload.record.expected("node identity")
    assert before == (expected, expected), (
        f"before the scenario: hostname and OPENSHELL_NODE_NAME were {before}, not {expected!r}"
    )
    lifecycle.verify("node identity", within=SETTLED)


@pytest.mark.openshell_traits(SANDBOXES_ADOPTED)
@pytest.mark.openshell_abilities(Ability.SANDBOX_CONTAINERS)
@pytest.mark.openshell_docker
def test_sandboxes_of_the_old_container_are_adopted_not_replaced(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    workload = lifecycle.workload
    states = [s for s in workload.states.values() if s.container_id]
    assert states, "the driver named no sandbox container before the scenario"
    for state in states:
        assert lifecycle.run.sandbox_fate(state.container) in (
            SandboxFate.KEPT,
            SandboxFate.RESTARTED,
        )
        assert state.container is not None
        now = workload.container_id(state.container)
        assert now == state.container_id, (
            f"sandbox {state.name}'s container was "
            f"{'removed' if now is None else 'replaced'}: it was not adopted"
        )
