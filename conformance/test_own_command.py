"""Property 16: the sandbox's own command runs again. A sandbox created with a command
(``spec.command``) runs it at every start of its container, not only the first: after a
restart or a re-made container, not just the idle supervisor (upstream NVIDIA/OpenShell #1805).

The running sandboxes of the workload are created with :data:`~._support.STARTS_COMMAND`, which
logs each start of their container to :data:`~._support.STARTS_LOG` in the workspace.
"""

from __future__ import annotations

import pytest

from pytest_openshell import SandboxFate

from ._support import SETTLED, STARTS_LOG, SURVIVING, Outcome, SandboxState, eventually

pytestmark = [pytest.mark.openshell_property(number=16), pytest.mark.openshell_traits(SURVIVING)]


def _logged_the_current_start(lifecycle: Outcome, state: SandboxState) -> list[str]:
    workload = lifecycle.workload
    current = workload.pid1_start(state.name)
    lines = workload.command_starts(state.name)
    assert lines and lines[-1] == current, (
        f"the own command of {state.name} did not run at this start of its container "
        f"(PID 1 started at {current}; {STARTS_LOG} has {lines})"
    )
    return lines


def test_the_sandboxs_own_command_ran_once_at_every_start_of_its_container(
    lifecycle: Outcome,
) -> None:
    def ran_once_per_start(state: SandboxState) -> None:
        fate = lifecycle.run.sandbox_fate(state.container)
        reading = lifecycle.reading(state)
        if fate is SandboxFate.KEPT:
            assert reading.starts == state.starts, (
                f"the own command of {state.name} ran again though its container was kept: "
                f"{reading.starts} (before: {state.starts})"
            )
            return
        lines = reading.starts
        if not lines or lines[-1] != reading.pid1_start:
            # Read before the command had logged this start: it may still be starting.
            lines = eventually(
                lambda: _logged_the_current_start(lifecycle, state),
                timeout=SETTLED,
                what=f"the own command of {state.name} to log this start",
            )
        assert lines[: len(state.starts)] == state.starts, (
            f"{STARTS_LOG} of {state.name} lost its earlier lines: {lines}"
        )
        assert len(lines) > len(state.starts) and len(set(lines)) == len(lines), (
            f"the own command of {state.name} did not run exactly once per start of its "
            f"{fate.value} container: {lines} (before: {state.starts})"
        )

    lifecycle.workload.each_running(ran_once_per_start)
