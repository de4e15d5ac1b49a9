"""Keeping the tests of one scenario on one xdist worker.

The conformance suite runs each scenario once, in a session-scoped fixture, for all the tests that
check it; spread over workers, every worker would run the scenario again. pytest-xdist's
``--dist loadgroup`` is meant for this (each test carries an ``xdist_group`` mark per scenario),
but with pytest 9.2 it no longer groups anything: xdist marks a group by rewriting a node id field
that pytest stopped reading (pytest-dev/pytest-xdist#1386, open at the time of writing). So under
``--dist loadgroup`` this plugin schedules with :class:`ScenarioGroupScheduling`, which also finds
the group in the test id's scenario key, and behaves as xdist's own wherever xdist's works.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
from xdist.scheduler import LoadGroupScheduling

_PARAMS = re.compile(r"\[([^\[\]]*)\]$")


def scenario_group(nodeid: str, keys: Iterable[str]) -> str | None:
    """The scenario id in ``nodeid``'s parameter id (``test_x[kill]``, ``test_y[kill-2]``;
    ``keys`` are the run's scenario ids: ``kill-supervisor`` when it has several transports, so
    each transport's run of a scenario is a group of its own)."""
    found = _PARAMS.search(nodeid)
    if found is None:
        return None
    parts = found.group(1)
    for key in sorted(keys, key=len, reverse=True):  # "docker-restart" before "restart"
        if parts == key or parts.startswith(f"{key}-") or parts.endswith(f"-{key}"):
            return key
        if f"-{key}-" in parts:
            return key
    return None


class ScenarioGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist is untyped
    """xdist's load-group scheduling, with a test's scenario id (key, and transport when the run
    has several) as its group."""

    def __init__(self, config: pytest.Config, log: object, keys: Iterable[str]) -> None:
        super().__init__(config, log)
        self._keys = tuple(keys)

    def _split_scope(self, nodeid: str) -> str:
        scope = str(super()._split_scope(nodeid))
        if scope != nodeid:  # xdist found an `@group` suffix: it works again
            return scope
        key = scenario_group(nodeid, self._keys)
        return f"openshell-{key}" if key else nodeid
