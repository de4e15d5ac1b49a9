"""Strike points: the seed decides them, and a name must be one of the moments."""

from __future__ import annotations

import pytest

from openshell_core.errors import UsageError
from pytest_openshell.strike import Moment, choose, parse_moment


def test_the_same_seed_strikes_each_scenario_at_the_same_moment() -> None:
    keys = ("kill", "docker-crash", "stop-start", "remove-keep-volume")
    assert [choose(7, key) for key in keys] == [choose(7, key) for key in keys]


def test_seeds_reach_every_moment() -> None:
    assert {choose(seed, "kill") for seed in range(50)} == set(Moment)


def test_an_unknown_moment_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="between, create, append, seeding"):
        parse_moment("lunch")
    assert parse_moment("") is None
    assert parse_moment("create") is Moment.CREATE
