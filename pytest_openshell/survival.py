"""The survival record: what a gateway acknowledged before a scenario, checked after it.

A test *tracks* a fact with a probe (a callable returning a comparable value): the probe runs at
once and its value is the expectation. After the scenario, :meth:`SurvivalRecord.verify` re-runs the
probe until it matches (within the recovery deadline) and then keeps re-running it for the settle
window: a state that is right and then goes wrong ("Ready, then Error two seconds later") fails.
Probes that raise count as "not yet" while waiting and as a failure once settled; a probe that
raises :class:`GiveUp` ends the wait at once (the fact cannot come back: a sandbox in ERROR, a
gateway that is gone).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import GiveUp, poll_until

__all__ = ["GiveUp", "Probe", "SurvivalRecord", "SurvivalViolation"]

Probe = Callable[[], Any]


class SurvivalViolation(AssertionError):
    """A tracked fact did not survive; the message says what was expected and what was seen."""


def __getattr__(name: str) -> Any:
    # ``Terminal`` was the old name of GiveUp (it named no terminal); kept for downstream probes.
    if name == "Terminal":
        warnings.warn(
            "pytest_openshell.Terminal is deprecated: raise pytest_openshell.GiveUp instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return GiveUp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    :param clock: monotonic seconds; with ``sleep``, replaced by unit tests so no time passes.
    """

    poll: float = 0.5
    facts: dict[str, _Fact] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

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
        matched_after = self._until_all_match(facts, within)
        settle_end = self.clock() + settle
        while self.clock() < settle_end:
            self.sleep(self.poll)
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

    def _until_all_match(self, facts: list[_Fact], within: float) -> float:
        started = self.clock()
        last: dict[str, str] = {}

        def pending() -> list[_Fact]:
            last.clear()  # the error shows the facts still wrong at the last look
            left = []
            for fact in facts:
                seen, error = _observe(fact)
                if error is None and seen == fact.expected:
                    continue
                if isinstance(error, GiveUp):
                    raise SurvivalViolation(
                        f"{fact.name}: cannot come back ({error})\n  expected: "
                        f"{fact.describe(fact.expected)}"
                    )
                left.append(fact)
                last[fact.name] = f"error: {error}" if error is not None else fact.describe(seen)
            return left

        try:
            poll_until(
                pending,
                lambda left: not left,
                timeout=within,
                what="tracked facts",
                describe=lambda left: ", ".join(fact.name for fact in left),
                schedule=(self.poll, 1.0, self.poll),
                clock=self.clock,
                sleep=self.sleep,
            )
        except ReadinessTimeout:
            left = [fact for fact in facts if fact.name in last]
            detail = "\n".join(
                f"  {fact.name}:\n    expected: {fact.describe(fact.expected)}\n"
                f"    seen:     {last[fact.name]}"
                for fact in left
            )
            raise SurvivalViolation(f"not back within {within:.0f} s:\n{detail}") from None
        return self.clock() - started


def _observe(fact: _Fact) -> tuple[Any, Exception | None]:
    try:
        return fact.probe(), None
    except Exception as exc:
        return None, exc
