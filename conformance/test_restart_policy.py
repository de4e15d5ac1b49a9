"""Property 9: ``unless-stopped``: a running gateway comes back after a daemon restart by itself, a
stopped one stays stopped."""

from __future__ import annotations

import pytest

from ._support import DAEMON, SURVIVING, Outcome

pytestmark = [pytest.mark.openshell_property(number=9), pytest.mark.openshell_docker]


@pytest.mark.openshell_traits(SURVIVING)
def test_the_gateway_restart_policy_is_unless_stopped(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    doc = lifecycle.workload.inspect_gateway()
    assert doc["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


@pytest.mark.openshell_traits(DAEMON)
def test_a_running_gateway_comes_back_after_the_daemon_without_any_command(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    assert lifecycle.run.recovery_error is None
    doc = lifecycle.workload.inspect_gateway()
    assert doc["State"]["Running"]


@pytest.mark.openshell_traits(DAEMON)
def test_a_gateway_its_user_stopped_stays_stopped_across_the_daemon(lifecycle: Outcome) -> None:
    sibling = lifecycle.stopped_sibling
    assert sibling is not None
    doc = lifecycle.session.engine.inspect_container(sibling.container_name)
    assert doc is not None, f"the stopped gateway {sibling.name}'s container is gone"
    assert not doc["State"]["Running"], (
        f"gateway {sibling.name}, stopped by its user, was started by the daemon"
    )
