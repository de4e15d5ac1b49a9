"""Property 11: after a negative control (``recreate``, ``destroy``: state must not survive) the
checks of properties 2, 3 and 5 fail, as they must: proof that they can."""

from __future__ import annotations

import pytest

from pytest_openshell import Ability, SurvivalViolation

from ._support import NEGATIVE, Outcome, check_markers, check_sandboxes_listed, check_state_digests

pytestmark = [pytest.mark.openshell_property(number=11), pytest.mark.openshell_traits(NEGATIVE)]

#: The state is gone for good; a few seconds show that it does not come back.
SHORT = 5.0


def test_the_sandbox_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        check_sandboxes_listed(lifecycle, within=SHORT)


def test_the_workspace_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        check_markers(lifecycle, within=SHORT)


@pytest.mark.openshell_abilities(Ability.STATE_DIGESTS)
def test_the_secrets_check_fails(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    with pytest.raises(SurvivalViolation):
        check_state_digests(lifecycle, within=SHORT)
