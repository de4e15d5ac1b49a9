"""poll_until, the one wait: deadline, backoff, giving up at once, the last observation in the
error. A fake clock advances only when the wait sleeps, so no test takes real time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import GiveUp, poll_until

if TYPE_CHECKING:
    from conftest import FakeClock


def values(*seen: object) -> Callable[[], object]:
    """An observation returning ``seen`` one after the other (the last one for ever)."""
    it: Iterator[object] = iter(seen)
    last: list[object] = []

    def observe() -> object:
        for value in it:
            last[:] = [value]
            return value
        return last[0]

    return observe


def test_the_first_observation_that_is_done_is_returned_without_sleeping(
    clock: FakeClock,
) -> None:
    result = poll_until(
        values(7), lambda v: v == 7, timeout=5, what="x", clock=clock, sleep=clock.sleep
    )
    assert result == 7
    assert clock.slept == []


def test_observations_are_spaced_by_the_backoff_schedule(clock: FakeClock) -> None:
    poll_until(
        values(0, 0, 0, 0, 1),
        lambda v: v == 1,
        timeout=60,
        what="x",
        schedule=(0.1, 2.0, 0.3),
        clock=clock,
        sleep=clock.sleep,
    )
    assert clock.slept == [0.1, 0.2, 0.3, 0.3]


def test_at_the_deadline_the_error_names_the_thing_and_the_last_observation(
    clock: FakeClock,
) -> None:
    with pytest.raises(ReadinessTimeout) as caught:
        poll_until(
            values("starting", "starting", "unhealthy-ish"),
            lambda v: v == "healthy",
            timeout=2,
            what="health of gw-1",
            describe=lambda v: f"status {v}",
            clock=clock,
            sleep=clock.sleep,
        )
    message = str(caught.value)
    assert message.startswith("health of gw-1: not within 2 s; last seen: status unhealthy-ish")
    assert caught.value.elapsed == pytest.approx(2.0)


def test_no_sleep_runs_past_the_deadline_and_one_last_look_is_taken_there(
    clock: FakeClock,
) -> None:
    looks: list[float] = []

    def observe() -> bool:
        looks.append(clock.now)
        return False

    with pytest.raises(ReadinessTimeout):
        poll_until(
            observe,
            bool,
            timeout=1.0,
            what="x",
            schedule=(0.4, 1.0, 0.4),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.slept == pytest.approx([0.4, 0.4, 0.2])
    assert looks[-1] == pytest.approx(101.0)


def test_an_exception_listed_in_retry_on_counts_as_not_yet_and_is_the_last_observation(
    clock: FakeClock,
) -> None:
    calls = 0

    def observe() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(f"refused #{calls}")

    with pytest.raises(ReadinessTimeout, match=r"last seen: ConnectionRefusedError: refused #"):
        poll_until(
            observe,
            bool,
            timeout=1,
            what="api",
            retry_on=(OSError,),
            clock=clock,
            sleep=clock.sleep,
        )
    assert calls > 2


def test_an_exception_not_listed_in_retry_on_propagates_at_once(clock: FakeClock) -> None:

    def observe() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        poll_until(
            observe, bool, timeout=60, what="x", retry_on=(OSError,), clock=clock, sleep=clock.sleep
        )
    assert clock.slept == []


def test_an_observation_raising_give_up_ends_the_wait_at_once_with_its_reason(
    clock: FakeClock,
) -> None:

    def observe() -> str:
        raise GiveUp("the container exited (exit code 3)")

    with pytest.raises(ReadinessTimeout) as caught:
        poll_until(observe, bool, timeout=60, what="gw-1", clock=clock, sleep=clock.sleep)
    assert caught.value.reason == "the container exited (exit code 3)"
    assert clock.slept == []


def test_fail_fast_ends_the_wait_at_once_and_says_what_was_seen_last(clock: FakeClock) -> None:
    dead = iter([None, None, "the SSH session ended (exit code 255)"])
    with pytest.raises(ReadinessTimeout) as caught:
        poll_until(
            values(b"", b"tick 0"),
            lambda out: b"tick 1" in out,
            timeout=60,
            what="output",
            fail_fast=lambda: next(dead),
            clock=clock,
            sleep=clock.sleep,
        )
    assert caught.value.reason == "the SSH session ended (exit code 255); last seen: b'tick 0'"
    assert len(clock.slept) == 2


def test_fail_fast_is_not_consulted_once_the_observation_is_done(clock: FakeClock) -> None:
    assert (
        poll_until(
            values(1),
            bool,
            timeout=5,
            what="x",
            fail_fast=lambda: "dead",
            clock=clock,
            sleep=clock.sleep,
        )
        == 1
    )


def test_the_error_carries_the_last_logs_and_the_hint(clock: FakeClock) -> None:
    with pytest.raises(ReadinessTimeout) as caught:
        poll_until(
            values(False),
            bool,
            timeout=0.5,
            what="x",
            last_logs=lambda: ["boom"],
            hint="docker logs x",
            clock=clock,
            sleep=clock.sleep,
        )
    assert caught.value.last_logs == ["boom"]
    assert "hint: docker logs x" in str(caught.value)
