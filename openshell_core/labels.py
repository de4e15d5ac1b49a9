"""Ownership labels: what marks a Docker object as ours.

Nothing without :data:`MANAGED_BY` set to :data:`MANAGER` is ever modified or removed by this
project. Objects made by a test run also carry :data:`RUN_ID`, so that a sweep can find a dead
run's leftovers.
"""

from __future__ import annotations

from collections.abc import Mapping

from openshell_core.errors import UsageError

# The label keys, spelled in openshell_core.wire.contract; re-exported for the label helpers' users.
from openshell_core.wire.contract import BUILT_BY_LABEL as BUILT_BY
from openshell_core.wire.contract import GATEWAY_LABEL as GATEWAY
from openshell_core.wire.contract import INPUT_HASH_LABEL as INPUT_HASH
from openshell_core.wire.contract import LABEL_PREFIX as PREFIX
from openshell_core.wire.contract import MANAGED_BY_LABEL as MANAGED_BY
from openshell_core.wire.contract import MANAGER
from openshell_core.wire.contract import NODE_NAME_LABEL as NODE_NAME
from openshell_core.wire.contract import ROLE_LABEL as ROLE
from openshell_core.wire.contract import RUN_ID_LABEL as RUN_ID
from openshell_core.wire.contract import SANDBOX_ID_LABEL as SANDBOX_ID

__all__ = [
    "BUILT_BY",
    "GATEWAY",
    "INPUT_HASH",
    "MANAGED_BY",
    "MANAGER",
    "NODE_NAME",
    "PREFIX",
    "ROLE",
    "RUN_ID",
    "SANDBOX_ID",
    "built_by_us",
    "is_ours",
    "merge_user_labels",
    "ownership",
]

#: The keyword of :func:`ownership` for each label it can set.
_KEYS = {
    "gateway": GATEWAY,
    "run_id": RUN_ID,
    "role": ROLE,
    "sandbox_id": SANDBOX_ID,
    "node_name": NODE_NAME,
}


def ownership(**extra: str) -> dict[str, str]:
    """Labels for a new object: our manager label plus ``extra`` (``gateway``, ``run_id``,
    ``role``, ``sandbox_id``, ``node_name``)."""
    unknown = sorted(set(extra) - set(_KEYS))
    if unknown:
        raise ValueError(f"no ownership label for {', '.join(unknown)}")
    labels = {MANAGED_BY: MANAGER}
    for key, value in extra.items():
        labels[_KEYS[key]] = value
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
