"""Property 15: a sandbox in Error is still the user's. Stop, start and delete are accepted for
it, and a start brings it back with its workspace intact; a gateway that starts again gives it
another attempt of its own.

Upstream: NVIDIA/OpenShell #3308 and #3440 (a sandbox in Error refused stop and start, its
``/sandbox`` out of reach), #2179 (after an engine restart the resume sweep skipped sandboxes in
Error). The sandbox is put in Error for real: its container fails at every start
(:data:`~._support.BREAK_SUPERVISOR`) until the gateway gives up on it.
"""

from __future__ import annotations

import secrets

import pytest

from openshell_core.errors import NotFoundError
from pytest_openshell.scenarios import Applies, GatewayFate, StateOutcome

from ._support import SETTLED, Outcome, SandboxState, eventually

pytestmark = pytest.mark.openshell_property(number=15)

#: The gateway ran on throughout: nothing but its user brings a sandbox out of Error.
GATEWAY_KEPT = Applies(state=StateOutcome.SURVIVES, gateway=frozenset({GatewayFate.KEPT}))
#: The gateway started again (its own container, or a new one): its resume sweep runs.
GATEWAY_STARTED = Applies(
    state=StateOutcome.SURVIVES,
    gateway=frozenset({GatewayFate.RESTARTED, GatewayFate.RECREATED}),
)
#: Seconds a gateway that answers again may take to start its resume sweep (leave ERROR).
SWEEP_WITHIN = 60.0


def errored(lifecycle: Outcome) -> SandboxState:
    state = lifecycle.workload.errored
    assert state is not None, "the workload made no sandbox in Error"
    return state


def check_workspace(lifecycle: Outcome, state: SandboxState, *, within: float) -> None:
    """Ready, and its marker has the bytes and mode it had before the Error."""
    workload = lifecycle.workload
    workload.wait_phase(state.name, "READY", within=within)
    facts = eventually(
        lambda: workload.marker_facts(state), timeout=SETTLED, what=f"markers of {state.name}"
    )
    assert facts == [(marker.mode, marker.digest) for marker in state.markers], (
        f"the workspace of {state.name} changed while it was in Error"
    )


@pytest.mark.openshell_traits(GATEWAY_KEPT)
def test_a_sandbox_in_error_accepts_stop_then_start_and_comes_back_with_its_workspace(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    state = errored(lifecycle)
    workload = lifecycle.workload
    assert workload.info(state.name).phase == "ERROR", f"{state.name} left Error on its own"
    with workload.client() as client:
        stopped = client.stop_sandbox(state.name)
        assert stopped.phase == "STOPPED", f"stop left {state.name} {stopped.phase}"
        client.start_sandbox(state.name)
    check_workspace(lifecycle, state, within=lifecycle.within)


@pytest.mark.openshell_traits(GATEWAY_STARTED)
def test_the_gateways_start_brings_back_a_sandbox_that_was_in_error(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    state = errored(lifecycle)
    workload = lifecycle.workload
    info = workload.info(state.name)
    if info.phase == "ERROR":  # the sweep may not have reached it yet
        eventually(
            lambda: _not_in_error(lifecycle, state),
            timeout=SWEEP_WITHIN,
            what=f"the gateway's start to try {state.name} again (it is in ERROR)",
        )
    check_workspace(lifecycle, state, within=lifecycle.within)


def _not_in_error(lifecycle: Outcome, state: SandboxState) -> None:
    info = lifecycle.workload.info(state.name)
    assert info.phase != "ERROR", f"{state.name} is still in ERROR: {info.reason}"


@pytest.mark.openshell_traits(GATEWAY_KEPT)
def test_a_sandbox_in_error_can_be_deleted(lifecycle: Outcome) -> None:
    lifecycle.reachable()
    workload = lifecycle.workload
    state = workload.make_errored(f"err-del-{secrets.token_hex(2)}")
    with workload.client() as client:
        client.delete_sandbox(state.name)

        def gone() -> None:
            with pytest.raises(NotFoundError):
                client.get_sandbox(state.name)

        eventually(gone, timeout=SETTLED, what=f"{state.name} gone after its delete")
