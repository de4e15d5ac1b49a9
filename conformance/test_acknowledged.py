"""Property 18: nothing acknowledged is lost. Client threads worked on the gateway before, during
and after the disruption (``--openshell-workload``); their history is checked after recovery."""

from __future__ import annotations

import pytest

from pytest_openshell.summary import OPERATIONS, SEED, TIMELINE

from ._support import SURVIVING, Outcome

pytestmark = [
    pytest.mark.openshell_property(number=18),
    pytest.mark.openshell_scenarios(*SURVIVING),
]


def test_every_acknowledged_operation_of_the_workload_holds_after_recovery(
    lifecycle: Outcome, record_property: pytest.RecordProperty
) -> None:
    history = lifecycle.history
    if history is None:
        pytest.skip("the workload is off; --openshell-workload runs it during the scenario")
    record_property(SEED, history.seed)
    lifecycle.require_recovered()
    where = (
        f"history {history.path}, timeline {history.timeline}; "
        f"seed {history.seed} (--openshell-seed {history.seed} repeats its choices)"
    )
    if history.error is not None:
        pytest.fail(f"the workload broke off: {history.error}\n{where}", pytrace=False)
    record_property(OPERATIONS, history.operations)
    if history.timeline is not None:
        record_property(TIMELINE, str(history.timeline))
    if history.violations:
        listed = "\n".join(str(v) for v in history.violations)
        pytest.fail(
            f"{len(history.violations)} violations of P18 in {history.operations} operations:\n"
            f"{listed}\n{where}",
            pytrace=False,
        )
