"""Property 18: nothing acknowledged is lost. Client threads worked on the gateway before, during
and after the disruption (``--openshell-workload``); their history is checked after recovery."""

from __future__ import annotations

import pytest

from pytest_openshell.summary import OPERATIONS, SEED, TIMELINE
from pytest_openshell.workload import WorkloadError

from ._history import HistoryOutcome
from ._support import SURVIVING, Outcome

pytestmark = [pytest.mark.openshell_property(number=18), pytest.mark.openshell_traits(SURVIVING)]


@pytest.fixture
def history(lifecycle: Outcome, request: pytest.FixtureRequest) -> HistoryOutcome:
    """The scenario's history; a client thread that died makes this an error of the harness
    (with its traceback), never a silent gap and never a verdict on the gateway."""
    if lifecycle.history is None:
        pytest.skip("the workload is off; --openshell-workload runs it during the scenario")
    request.node.user_properties.append((SEED, lifecycle.history.seed))
    if lifecycle.history.thread_error is not None:
        raise WorkloadError(lifecycle.history.thread_error)
    return lifecycle.history


def test_every_acknowledged_operation_of_the_workload_holds_after_recovery(
    lifecycle: Outcome, history: HistoryOutcome, request: pytest.FixtureRequest
) -> None:
    lifecycle.require_recovered()
    where = (
        f"history {history.path}, timeline {history.timeline}; "
        f"seed {history.seed} (--openshell-seed {history.seed} repeats its choices)"
    )
    if history.error is not None:
        pytest.fail(f"the workload broke off: {history.error}\n{where}", pytrace=False)
    request.node.user_properties.append((OPERATIONS, history.operations))
    if history.timeline is not None:
        request.node.user_properties.append((TIMELINE, str(history.timeline)))
    if history.violations:
        listed = "\n".join(str(v) for v in history.violations)
        pytest.fail(
            f"{len(history.violations)} violations of P18 in {history.operations} operations:\n"
            f"{listed}\n{where}",
            pytrace=False,
        )
