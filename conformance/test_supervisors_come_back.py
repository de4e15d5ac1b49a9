"""Property 13: supervisors come back, and Ready means usable.

After a scenario, each running sandbox's supervisor session (``supervisor`` transport) is there
again within the recovery budget, observable through the gateway's API: a live session, a new
one (a new connection epoch or instance id) wherever the scenario broke the old one, and none
refused as a duplicate (upstream NVIDIA/OpenShell #3546: after a gateway restart a stale
session-owner record refused the supervisor's new connection). The session is read from the
``SupervisorSession`` condition the reference gateway puts on each sandbox (see
docs/conformance.md: an upstream gateway carries no such condition, so the check is skipped for a
gateway that reports none, as for an ``nssh1`` gateway).

And in both transports, a sandbox reported Ready is usable at once: the first exec and the first
SSH session after it is first seen Ready succeed with no retry (upstream makes the live
supervisor session the readiness authority). They are made by the ``lifecycle`` fixture right
after the scenario, before any other check reaches the sandboxes
(:func:`~._support.first_use_after_ready`).
"""

from __future__ import annotations

import pytest

from openshell_core.host.api_client import SupervisorSession
from openshell_core.retry import GiveUp
from openshell_core.wire import contract
from pytest_openshell import GatewayFate, SandboxFate

from ._support import SURVIVING, Outcome, SandboxState, eventually, refused_supervisor

pytestmark = [pytest.mark.openshell_property(number=13), pytest.mark.openshell_traits(SURVIVING)]


def _broken_by_the_scenario(lifecycle: Outcome, state: SandboxState) -> bool:
    """Whether the scenario ended the sandbox's supervisor session: the gateway or the sandbox's
    container did not run on untouched."""
    gateway_kept = lifecycle.traits.gateway is GatewayFate.KEPT
    return not gateway_kept or lifecycle.run.sandbox_fate(state.container) is not SandboxFate.KEPT


def _session_back(lifecycle: Outcome, state: SandboxState, *, new: bool) -> SupervisorSession:
    info = lifecycle.workload.info(state.name)
    refused = refused_supervisor(info)
    if refused is not None:
        raise GiveUp(refused)
    session = info.supervisor_session
    assert session is not None, f"the gateway no longer reports the session of {state.name}"
    assert session.live, f"{state.name} has no live supervisor session: {session.message}"
    if new:
        before, now = state.supervisor_session, session.identity
        assert before is not None and now is not None, (before, now)
        assert now[0] != before[0] and now[1:] != before[1:], (
            f"{state.name} is still on its session from before the scenario: {session.message}"
        )
    return session


def test_every_running_sandboxs_supervisor_session_comes_back_new_and_none_is_refused(
    lifecycle: Outcome,
) -> None:
    workload = lifecycle.workload
    if workload.transport != contract.TRANSPORT_SUPERVISOR:
        pytest.skip(
            f"the gateway speaks {workload.transport}: it dials its sandboxes, whose supervisors "
            "hold no session (the session part of property 13 is for the supervisor transport)"
        )
    lifecycle.require_recovered()
    for state in workload.running_states():
        assert state.supervisor_session is not None, (
            f"the gateway reported no supervisor session for {state.name} before the scenario"
        )
        new = _broken_by_the_scenario(lifecycle, state)
        eventually(
            lambda state=state, new=new: _session_back(lifecycle, state, new=new),  # type: ignore[misc]
            timeout=lifecycle.within,
            what=f"a {'new ' if new else ''}live supervisor session of {state.name}",
        )


def test_the_first_exec_and_ssh_session_after_ready_succeed_without_a_retry(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    running = {state.name for state in lifecycle.workload.running_states()}
    assert {use.sandbox for use in lifecycle.first_use} == running, (
        f"the first use was tried on {[u.sandbox for u in lifecycle.first_use]}, not {running}"
    )
    failures = [failure for use in lifecycle.first_use for failure in use.failures]
    assert not failures, "\n".join(failures)
