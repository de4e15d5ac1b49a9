"""The survival record: what a gateway acknowledged before a scenario, checked after it.

A test *tracks* a fact with a probe (a callable returning a comparable value): the probe runs at
once and its value is the expectation. After the scenario, :meth:`SurvivalRecord.verify` re-runs the
probe until it matches (within the recovery deadline) and then keeps re-running it for the settle
window: a state that is right and then goes wrong ("Ready, then Error two seconds later") fails.
Probes that raise count as "not yet" while waiting and as a failure once settled; a probe that
raises :class:`Terminal` ends the wait at once (the fact cannot come back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Probe = Callable[[], Any]


class SurvivalViolation(AssertionError):
    """A tracked fact did not survive; the message says what was expected and what was seen."""


class Terminal(Exception):
    """Raised by a probe when the fact can never come back (a sandbox in ERROR, a gateway that
    is gone): the wait ends at once instead of at its deadline."""


@dataclass
class _Fact:
    name: str
    probe: Probe
    expected: Any
    describe: Callable[[Any], str]


@dataclass
class SurvivalRecord:
    """Facts recorded before a scenario, to compare after it.

    :param poll: seconds between probes while waiting or settling.
    """

    poll: float = 0.5
    facts: dict[str, _Fact] = field(default_factory=dict)

    def track(self, name: str, probe: Probe, *, describe: Callable[[Any], str] = repr) -> Any:
        """Run ``probe`` now and remember its value as what must survive; returns the value."""
        if name in self.facts:
            raise ValueError(f"fact {name!r} is already tracked")
        value = probe()
        self.facts[name] = _Fact(name, probe, value, describe)
        return value

    def expect(
        self, name: str, probe: Probe, expected: Any, *, describe: Callable[[Any], str] = repr
    ) -> None:
        """Remember ``expected`` (acknowledged earlier, by other means) as what ``probe`` must
        return after the scenario."""
        if name in self.facts:
            raise ValueError(f"fact {name!r} is already tracked")
        self.facts[name] = _Fact(name, probe, expected, describe)

    def expected(self, name: str) -> Any:
        return self.facts[name].expected

    def verify(self, *names: str, within: float, settle: float) -> float:
        """Check the named facts (all when none are named); returns seconds until they matched.

        :param within: seconds the facts may take to come back.
        :param settle: seconds they must then stay right.
        :raises SurvivalViolation: naming the fact, the expected value and the last value seen.
        """
        facts = [self.facts[name] for name in names] if names else list(self.facts.values())
        started = time.monotonic()
        deadline = started + within
        matched_after = self._until_all_match(facts, deadline, within)
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end:
            time.sleep(self.poll)
            for fact in facts:
                seen, error = _observe(fact)
                if error is not None or seen != fact.expected:
                    got = f"error: {error}" if error is not None else fact.describe(seen)
                    raise SurvivalViolation(
                        f"{fact.name}: matched after {matched_after:.1f} s, then changed within "
                        f"the {settle:.0f} s settle window\n  expected: "
                        f"{fact.describe(fact.expected)}\n  seen:     {got}"
                    )
        return matched_after

    def _until_all_match(self, facts: list[_Fact], deadline: float, within: float) -> float:
        started = time.monotonic()
        last: dict[str, str] = {}
        while True:
            pending = []
            for fact in facts:
                seen, error = _observe(fact)
                if error is None and seen == fact.expected:
                    continue
                if isinstance(error, Terminal):
                    raise SurvivalViolation(
                        f"{fact.name}: cannot come back ({error})\n  expected: "
                        f"{fact.describe(fact.expected)}"
                    )
                pending.append(fact)
                last[fact.name] = f"error: {error}" if error is not None else fact.describe(seen)
            if not pending:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                detail = "\n".join(
                    f"  {fact.name}:\n    expected: {fact.describe(fact.expected)}\n"
                    f"    seen:     {last[fact.name]}"
                    for fact in pending
                )
                raise SurvivalViolation(f"not back within {within:.0f} s:\n{detail}")
            time.sleep(self.poll)


def _observe(fact: _Fact) -> tuple[Any, Exception | None]:
    try:
        return fact.probe(), None
    except Exception as exc:
        return None, exc
