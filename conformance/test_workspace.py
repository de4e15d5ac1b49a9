"""Property 3: the workspace survives, and is seeded once."""

from __future__ import annotations

import pytest

from pytest_openshell import SandboxFate

from ._support import (
    IMAGE_FILE_CHANGED,
    IMAGE_FILE_DELETED,
    OUTSIDE_FILE,
    SENTINEL,
    SURVIVING,
    Outcome,
    check_markers,
)

pytestmark = [pytest.mark.openshell_property(number=3), pytest.mark.openshell_traits(SURVIVING)]


def test_marker_files_keep_their_bytes_and_mode(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    check_markers(lifecycle, within=lifecycle.within)


def test_the_workspace_sentinel_exists(lifecycle: Outcome) -> None:
    for state in lifecycle.workload.running_states():
        assert lifecycle.reading(state).sentinel, f"{SENTINEL} is missing in {state.name}"


def test_image_files_the_user_changed_or_deleted_stay_so(lifecycle: Outcome) -> None:
    for state in lifecycle.workload.running_states():
        reading = lifecycle.reading(state)
        assert reading.image_file_digest == state.image_file_digest, (
            f"{IMAGE_FILE_CHANGED} in {state.name} was seeded again over the user's change"
        )
        assert reading.image_file_deleted, (
            f"{IMAGE_FILE_DELETED} in {state.name} came back after the user deleted it"
        )


def test_files_outside_the_workspace_live_exactly_as_long_as_the_container(
    lifecycle: Outcome,
) -> None:
    """The documented rule: a file outside /sandbox is in the container's own layer, so it
    survives a restart of the container and is lost when the container is made anew."""
    for state in lifecycle.workload.running_states():
        expected = lifecycle.run.sandbox_fate(state.container)
        present = lifecycle.reading(state).outside_file
        assert present == (expected is not SandboxFate.RECREATED), (
            f"{OUTSIDE_FILE} in {state.name} is {'present' if present else 'absent'}, but its "
            f"container was {expected.value}"
        )
