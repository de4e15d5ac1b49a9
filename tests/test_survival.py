"""SurvivalRecord: a tracked fact must come back within the deadline and then stay right for the
settle window; a probe raising GiveUp ends the wait at once; every failure names the fact, what
was expected and what was seen last. Pure logic on a fake clock: no test takes real time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

import pytest_openshell
from pytest_openshell import GiveUp, SurvivalRecord, SurvivalViolation

if TYPE_CHECKING:
    from conftest import FakeClock

POLL = 1.0


def record_on(clock: FakeClock) -> SurvivalRecord:
    return SurvivalRecord(poll=POLL, clock=clock, sleep=clock.sleep)


def timeline(clock: FakeClock, *changes: tuple[float, object]) -> Callable[[], object]:
    """A probe whose value is the last of ``changes`` (seconds after the start, value) that has
    begun; an Exception value is raised."""
    start = clock.now

    def probe() -> object:
        value: object = None
        for at, changed in changes:
            if clock.now - start >= at:
                value = changed
        if isinstance(value, Exception):
            raise value
        return value

    return probe


def test_tracking_runs_the_probe_at_once_and_its_value_is_what_must_survive(
    clock: FakeClock,
) -> None:
    record = record_on(clock)
    assert record.track("phase", lambda: "READY") == "READY"
    assert record.expected("phase") == "READY"


def test_a_fact_is_tracked_once() -> None:
    record = SurvivalRecord()
    record.track("phase", lambda: "READY")
    with pytest.raises(ValueError, match="already tracked"):
        record.expect("phase", lambda: "READY", "READY")


def test_verify_returns_the_seconds_until_every_fact_matched(clock: FakeClock) -> None:
    record = record_on(clock)
    record.expect("phase", timeline(clock, (0, "PROVISIONING"), (3, "READY")), "READY")
    record.expect("id", lambda: "sb-1", "sb-1")
    assert record.verify(within=60, settle=0) == pytest.approx(3.0)


def test_a_probe_that_raises_while_waiting_counts_as_not_yet(clock: FakeClock) -> None:
    record = record_on(clock)
    probe = timeline(clock, (0, ConnectionRefusedError("gateway down")), (2, "READY"))
    record.expect("phase", probe, "READY")
    assert record.verify(within=60, settle=0) == pytest.approx(2.0)


def test_a_value_that_goes_right_then_wrong_inside_the_settle_window_fails(
    clock: FakeClock,
) -> None:
    record = record_on(clock)
    probe = timeline(clock, (0, "PROVISIONING"), (1, "READY"), (4, "ERROR"))
    record.expect("phase", probe, "READY")
    with pytest.raises(SurvivalViolation) as caught:
        record.verify(within=60, settle=10)
    assert str(caught.value) == (
        "phase: matched after 1.0 s, then changed within the 10 s settle window\n"
        "  expected: 'READY'\n"
        "  seen:     'ERROR'"
    )


def test_a_probe_that_raises_inside_the_settle_window_fails_with_its_error(
    clock: FakeClock,
) -> None:
    record = record_on(clock)
    record.expect("phase", timeline(clock, (0, "READY"), (2, OSError("refused"))), "READY")
    with pytest.raises(SurvivalViolation, match=r"seen:     error: refused"):
        record.verify(within=60, settle=10)


def test_a_value_that_stays_right_for_the_settle_window_passes_and_is_probed_throughout_it(
    clock: FakeClock,
) -> None:
    record = record_on(clock)
    looks: list[float] = []

    def probe() -> str:
        looks.append(clock.now)
        return "READY"

    record.expect("phase", probe, "READY")
    assert record.verify(within=60, settle=5) == 0.0
    assert looks == pytest.approx([100.0, 101.0, 102.0, 103.0, 104.0, 105.0])


def test_a_change_after_the_settle_window_is_not_the_records_business(clock: FakeClock) -> None:
    record = record_on(clock)
    record.expect("phase", timeline(clock, (0, "READY"), (6, "DELETED")), "READY")
    record.verify(within=60, settle=5)


def test_a_probe_raising_give_up_ends_the_wait_at_once(clock: FakeClock) -> None:
    record = record_on(clock)

    def probe() -> str:
        raise GiveUp("sandbox sb-1 is in ERROR: image pull failed")

    record.expect("phase", probe, "READY")
    with pytest.raises(SurvivalViolation) as caught:
        record.verify(within=600, settle=10)
    assert str(caught.value) == (
        "phase: cannot come back (sandbox sb-1 is in ERROR: image pull failed)\n  expected: 'READY'"
    )
    assert clock.slept == []


def test_at_the_deadline_the_error_names_each_fact_still_wrong_and_its_last_value(
    clock: FakeClock,
) -> None:
    record = record_on(clock)
    record.expect("phase", timeline(clock, (0, "STOPPED"), (5, "PROVISIONING")), "READY")
    record.expect("id", timeline(clock, (0, "?"), (2, "sb-1")), "sb-1")
    with pytest.raises(SurvivalViolation) as caught:
        record.verify(within=10, settle=5)
    assert str(caught.value) == (
        "not back within 10 s:\n  phase:\n    expected: 'READY'\n    seen:     'PROVISIONING'"
    )
    assert clock.now - 100.0 == pytest.approx(10.0)


def test_verify_checks_only_the_facts_it_names(clock: FakeClock) -> None:
    record = record_on(clock)
    record.expect("phase", lambda: "READY", "READY")
    record.expect("gone", lambda: "here", "deleted")
    assert record.verify("phase", within=1, settle=0) == 0.0


def test_the_old_name_terminal_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="raise pytest_openshell.GiveUp instead"):
        old = pytest_openshell.Terminal
    assert old is GiveUp
