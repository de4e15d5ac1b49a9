"""Property 2: sandboxes survive with their intent."""

from __future__ import annotations

import pytest

from ._support import SURVIVING, Outcome, check_sandboxes_listed, eventually

pytestmark = [pytest.mark.openshell_property(number=2), pytest.mark.openshell_traits(SURVIVING)]


def test_every_sandbox_is_listed_with_its_id_and_name_and_no_other(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    check_sandboxes_listed(lifecycle, within=lifecycle.within)


def test_a_running_sandbox_is_ready_again_and_stays_ready(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    lifecycle.settled()


def test_a_sandbox_its_user_stopped_stays_stopped_and_starts_on_request(lifecycle: Outcome) -> None:
    workload = lifecycle.workload
    for state in workload.stopped_states():
        lifecycle.verify(f"phase {state.name}")
        with workload.client() as client:
            client.start_sandbox(state.name)
        # (gives up at once on ERROR, or on a supervisor the gateway refuses as a duplicate)
        eventually(
            lambda state=state: _is_ready(lifecycle, state.name),  # type: ignore[misc]
            timeout=lifecycle.within,
            what=f"{state.name} Ready after its start",
        )
        assert workload.info(state.name).id == state.id


def _is_ready(lifecycle: Outcome, name: str) -> None:
    phase = lifecycle.workload.phase(name)
    assert phase == "READY", f"{name} is {phase}"
