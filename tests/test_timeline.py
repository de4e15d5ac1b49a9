"""The timeline page of a scenario: self-contained, and every operation and event on it."""

from __future__ import annotations

import re

from pytest_openshell.history import Event, History, Kind, Operation, Outcome
from pytest_openshell.timeline import COLOURS, render


def _history() -> History:
    ops = [
        Operation(0, "w0", Kind.CREATE, "a", 0.1, 1.9, Outcome.OK, sandbox_id="id-a"),
        Operation(
            1, "w0", Kind.APPEND, "a", 2.0, 2.2, Outcome.OK, path="/p", line="a-1", via="ssh"
        ),
        Operation(2, "w1", Kind.APPEND, "a", 3.0, 5.0, Outcome.UNKNOWN, error="UNAVAILABLE"),
        Operation(3, "w1", Kind.STOP, "a", 5.5, 5.6, Outcome.FAIL, error="not found"),
        Operation(
            4, "w1", Kind.APPEND, "a", 6.5, 6.6, Outcome.OK, path="/p", line="a-2", via="ssh"
        ),
    ]
    events = [
        Event(2.5, "disruption", until=3.0),
        Event(3.0, "gateway down", until=6.0),
        Event(6.0, "API answers"),
    ]
    return History(scenario="kill", seed=3, operations=ops, events=events)


def test_the_timeline_fetches_nothing() -> None:
    page = render(_history())
    assert not re.search(r"(src|href)\s*=|url\(|<script|<link|@import", page)


def test_every_operation_is_a_bar_coloured_by_its_outcome() -> None:
    page = render(_history())
    for outcome, count in ((Outcome.OK, 3), (Outcome.UNKNOWN, 1), (Outcome.FAIL, 1)):
        assert page.count(f'fill="{COLOURS[outcome]}"') == count
    assert "#2 w1 append a" in page and "UNAVAILABLE" in page


def test_the_scenarios_events_and_the_recovery_read_off_the_operations_are_drawn() -> None:
    page = render(_history())
    for what in ("disruption", "gateway down", "API answers", "a Ready (answers)", "SSH back"):
        assert what in page
    assert "6.60 s  SSH back" in page


def test_the_timeline_names_the_transport_of_the_scenarios_gateway() -> None:
    history = _history()
    assert "transport" not in render(history)
    history.transport = "supervisor"
    assert "<p>transport supervisor; seed 3;" in render(history)
