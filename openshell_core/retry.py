"""Retry schedules: the one backoff used by the readiness waits and by the SSH tunnel's retries."""

from __future__ import annotations

from collections.abc import Iterator


def backoff(first: float, factor: float, cap: float) -> Iterator[float]:
    """Sleep intervals: ``first``, then each ``factor`` times the last, at most ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)
