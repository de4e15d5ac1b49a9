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
    lifecycle.reachable()
    workload = lifecycle.workload
    for state, found in workload.shell_each(
        lambda _: f"test -e {SENTINEL} && echo found || echo missing"
    ):
        assert found.strip() == b"found", f"{SENTINEL} is missing in {state.name}"


def test_image_files_the_user_changed_or_deleted_stay_so(lifecycle: Outcome) -> None:
    lifecycle.reachable()
    workload = lifecycle.workload
    for state, stdout in workload.shell_each(
        lambda _: f"sha256sum {IMAGE_FILE_CHANGED}; test ! -e {IMAGE_FILE_DELETED} && echo deleted"
    ):
        out = stdout.decode()
        assert out.split()[0] == state.image_file_digest, (
            f"{IMAGE_FILE_CHANGED} in {state.name} was seeded again over the user's change"
        )
        assert out.strip().endswith("deleted"), (
            f"{IMAGE_FILE_DELETED} in {state.name} came back after the user deleted it"
        )


def test_files_outside_the_workspace_live_exactly_as_long_as_the_container(
    lifecycle: Outcome,
) -> None:
    """The documented rule: a file outside /sandbox is in the container's own layer, so it
    survives a restart of the container and is lost when the container is made anew."""
    lifecycle.reachable()
    workload = lifecycle.workload
    for state, stdout in workload.shell_each(
        lambda _: f"test -e {OUTSIDE_FILE} && echo present || echo absent"
    ):
        expected = lifecycle.run.sandbox_fate(state.container)
        present = stdout.strip()
        want = b"absent" if expected is SandboxFate.RECREATED else b"present"
        assert present == want, (
            f"{OUTSIDE_FILE} in {state.name} is {present.decode()}, but its container was "
            f"{expected.value}"
        )
