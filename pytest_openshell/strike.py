"""When a scenario strikes: between operations, or at a chosen moment of the workload's work.

The moments are timing hooks on the host side (no fault switch): before the disruption starts,
the workload waits until the moment is current, then the scenario strikes at once.

- ``between``: no workload operation in flight;
- ``create``: a ``CreateSandbox`` in flight (the gateway generates the host key, writes the store
  record, answers): a strike here hits the store write of the create;
- ``append``: an append in flight, through exec or SSH;
- ``seeding``: a sandbox of the workload is ``PROVISIONING``: its workspace volume being made and
  seeded by the gateway.

The moment of a scenario is drawn from the run's seed (``--openshell-seed``), or named with
``--openshell-strike``. Whether the strike hit (the operation was still in flight when the
disruption began) is recorded in the history as an event, since timing under load decides it.
"""

from __future__ import annotations

import enum
import random

from openshell_core.errors import UsageError


class Moment(enum.Enum):
    BETWEEN = "between"
    CREATE = "create"
    APPEND = "append"
    SEEDING = "seeding"


def parse_moment(text: str) -> Moment | None:
    """``--openshell-strike``: a moment's name, or empty (drawn from the seed)."""
    text = text.strip()
    if not text:
        return None
    try:
        return Moment(text)
    except ValueError:
        known = ", ".join(m.value for m in Moment)
        raise UsageError(f"--openshell-strike takes one of {known}, not {text!r}") from None


def choose(seed: int, scenario: str) -> Moment:
    """The moment ``scenario`` strikes at in a run with ``seed`` (the same seed, the same one)."""
    return random.Random(f"{seed}-{scenario}-strike").choice(list(Moment))
