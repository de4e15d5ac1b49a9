"""Property 14: downtime longer than a token's life strands nothing.

In the ``long-downtime`` scenario the gateway's sandbox tokens live a few seconds
(``Traits.outlives_tokens``), and the gateway stays down until every token a supervisor holds
has expired. When it is back, each supervisor must get a fresh token (upstream's renewal path
after expiry) and reconnect: every running sandbox is Ready again within the budget, and an exec
through the API and a new SSH session reach it (upstream openkaiden/kaiden #2654: the token
expired while the gateway was down, and the supervisor never reconnected).
"""

from __future__ import annotations

import pytest

from pytest_openshell import Applies, StateOutcome

from ._support import SETTLED, Outcome, eventually

OUTLIVED = Applies(state=StateOutcome.SURVIVES, outlives_tokens=True)

pytestmark = [pytest.mark.openshell_property(number=14), pytest.mark.openshell_traits(OUTLIVED)]


def test_every_running_sandbox_is_ready_and_reachable_after_its_token_expired(
    lifecycle: Outcome,
) -> None:
    lifecycle.require_recovered()
    notes = lifecycle.run.notes
    lifetime, down_for = notes.get("token_lifetime"), notes.get("down_for")
    assert lifetime and down_for and down_for > lifetime, (
        f"the scenario kept the gateway down {down_for} s, not past its tokens' life "
        f"({lifetime} s): nothing expired, so nothing was checked"
    )
    workload = lifecycle.workload
    for state in workload.running_states():
        workload.wait_phase(state.name, "READY", within=lifecycle.within)

        def executes(name: str = state.name) -> None:
            with workload.client() as client:
                result = client.exec(name, ["echo", "exec reached"])
            assert (result.exit_code, result.stdout) == (0, b"exec reached\n"), result

        def answers_ssh(name: str = state.name) -> None:
            assert workload.shell(name, "echo ssh reached") == b"ssh reached\n"

        # Ready is reported once the supervisor is back: exec and SSH need no long wait.
        eventually(executes, timeout=SETTLED, what=f"an exec in {state.name}")
        eventually(answers_ssh, timeout=SETTLED, what=f"a new SSH session into {state.name}")
