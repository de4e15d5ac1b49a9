"""Ownership labels: what marks a Docker object as ours.

Nothing without :data:`MANAGED_BY` set to :data:`MANAGER` is ever modified or removed by this
project. Objects made by a test run also carry :data:`RUN_ID`, so that a sweep can find a dead
run's leftovers.
"""

from __future__ import annotations

from collections.abc import Mapping

from openshell_core.errors import UsageError

PREFIX = "openshell.ai/"
MANAGED_BY = "openshell.ai/managed-by"
MANAGER = "pytest-openshell"
GATEWAY = "openshell.ai/gateway"
RUN_ID = "openshell.ai/run-id"
ROLE = "openshell.ai/role"
INPUT_HASH = "openshell.ai/input-hash"
#: On images instead of MANAGED_BY: a container inherits its image's labels, so an image labelled
#: MANAGED_BY would make every container run from it (ours or anyone's) look like ours.
BUILT_BY = "openshell.ai/built-by"
SANDBOX_ID = "openshell.ai/sandbox-id"
NODE_NAME = "openshell.ai/node-name"


def ownership(**extra: str) -> dict[str, str]:
    """Labels for a new object: our manager label plus ``extra`` (keys without the prefix)."""
    labels = {MANAGED_BY: MANAGER}
    for key, value in extra.items():
        labels[PREFIX + key.replace("_", "-")] = value
    return labels


def is_ours(labels: Mapping[str, str] | None) -> bool:
    """True when an object's labels say this project manages it."""
    return bool(labels) and labels.get(MANAGED_BY) == MANAGER  # type: ignore[union-attr]


def built_by_us(labels: Mapping[str, str] | None) -> bool:
    """True when an image's labels say this project built it."""
    return bool(labels) and labels.get(BUILT_BY) == MANAGER  # type: ignore[union-attr]


def merge_user_labels(ours: Mapping[str, str], user: Mapping[str, str]) -> dict[str, str]:
    """Add user labels, refusing any in our reserved namespace (they would fake ownership)."""
    clash = sorted(key for key in user if key.startswith(PREFIX))
    if clash:
        raise UsageError(
            f"labels {', '.join(clash)} use the reserved prefix {PREFIX!r}",
            hint="choose label keys outside openshell.ai/",
        )
    return {**user, **ours}
