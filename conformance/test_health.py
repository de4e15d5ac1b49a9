"""Property 1: the gateway answers its health API after the scenario, within the budget."""

from __future__ import annotations

import pytest

from ._support import SURVIVING, Outcome

pytestmark = pytest.mark.openshell_property(number=1)


@pytest.mark.openshell_traits(SURVIVING)
def test_the_gateway_answers_its_health_api(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with lifecycle.workload.client() as client:
        assert client.health()
