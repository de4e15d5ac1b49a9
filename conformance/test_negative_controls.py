"""Property 11: after a negative control (``recreate``, ``destroy``: state must not survive) the
checks of properties 2, 3 and 5 fail, as they must: proof that they can.

The checks of properties 2 and 5 wait out their whole window before they fail; they begin at the
scenario's recovery, side by side (:meth:`~._support.Outcome.begin_lost_checks`)."""

from __future__ import annotations

import pytest

from pytest_openshell import Ability, SurvivalViolation

from ._support import LOST_WINDOW, NEGATIVE, Outcome, check_markers

pytestmark = [pytest.mark.openshell_property(number=11), pytest.mark.openshell_traits(NEGATIVE)]


def test_the_sandbox_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        lifecycle.lost_check("sandboxes")


def test_the_workspace_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        check_markers(lifecycle, within=LOST_WINDOW)


@pytest.mark.openshell_abilities(Ability.STATE_DIGESTS)
def test_the_secrets_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        lifecycle.lost_check("state digests")
