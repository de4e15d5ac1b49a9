"""Waiting: the one backoff schedule, and :func:`poll_until`, the one poll loop.

Every wait in the project has the same four parts: a deadline, a backoff between observations, a
way to give up at once when the awaited thing has died (waiting longer cannot help), and an error
that says what was seen last. :func:`poll_until` holds them once; the clock and the sleep are
parameters, so the logic is tested without real time passing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from openshell_core.errors import ReadinessTimeout

T = TypeVar("T")

#: The default schedule of :func:`poll_until`: close together at first (most waits end within a
#: second), then every half second.
DEFAULT_BACKOFF = (0.05, 1.5, 0.5)


def backoff(first: float, factor: float, cap: float) -> Iterator[float]:
    """Sleep intervals: ``first``, then each ``factor`` times the last, at most ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


class GiveUp(Exception):
    """Raised by an observation (or a survival probe) when waiting longer cannot help: the
    awaited thing died or is gone for good. The wait ends at once with this reason."""


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def poll_until(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    retry_on: tuple[type[Exception], ...] = (),
    fail_fast: Callable[[], str | None] | None = None,
    describe: Callable[[T], str] = repr,
    schedule: tuple[float, float, float] = DEFAULT_BACKOFF,
    last_logs: Callable[[], list[str]] | None = None,
    hint: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``observe`` until ``done(observation)``; returns that observation.

    :param observe: looks once. An exception listed in ``retry_on`` counts as "not yet" (and is
        the last observation); :class:`GiveUp` ends the wait at once; anything else propagates.
    :param done: says whether an observation is what was awaited.
    :param timeout: seconds from the first observation; no sleep runs past it, and one last
        observation is made at the deadline.
    :param what: names the awaited thing in the error ("the gateway API of gw-1").
    :param fail_fast: called after each observation that is not yet done: returns why waiting
        cannot help any more (the process exited, the container vanished), or None.
    :param describe: renders an observation for the error message.
    :param schedule: ``(first, factor, cap)`` of :func:`backoff`.
    :param last_logs: fetches the awaited thing's last log lines for the error.
    :param hint: the error's hint (how to look closer, what to fix).
    :raises ReadinessTimeout: at the deadline, or at once on :class:`GiveUp` or ``fail_fast``;
        its reason ends with the last observation.
    """
    started = clock()
    deadline = started + timeout
    delays = backoff(*schedule)

    def failed(reason: str) -> ReadinessTimeout:
        logs = last_logs() if last_logs is not None else None
        return ReadinessTimeout(what, reason, elapsed=clock() - started, last_logs=logs, hint=hint)

    while True:
        try:
            seen = observe()
        except GiveUp as exc:
            raise failed(str(exc)) from exc
        except retry_on as exc:
            last = _describe_error(exc)
        else:
            if done(seen):
                return seen
            last = describe(seen)
        reason = fail_fast() if fail_fast is not None else None
        if reason is not None:
            raise failed(f"{reason}; last seen: {last}")
        now = clock()
        if now >= deadline:
            raise failed(f"not within {timeout:g} s; last seen: {last}")
        sleep(min(next(delays), deadline - now))
