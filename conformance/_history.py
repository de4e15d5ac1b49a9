"""Property 18 in the conformance run: client threads work on the gateway before, during and after
the scenario's disruption (``--openshell-workload``), and their history is checked after recovery.

The history goes to ``<artefacts>/history/<scenario>.jsonl`` whatever the outcome; the workload's
sandboxes are deleted once it is checked, so the other properties see the suite's own workload
alone.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from openshell_core.errors import OpenShellError
from pytest_openshell.artefacts import private_directory, write_private
from pytest_openshell.drivers import GatewayHandle
from pytest_openshell.fixtures import HeldSession, SshHelper
from pytest_openshell.history import Violation, check, dump
from pytest_openshell.scenarios import ScenarioRun
from pytest_openshell.session import OpenShellSession
from pytest_openshell.timeline import render
from pytest_openshell.workload import ClientWorkload, WorkloadError

#: Appends acknowledged before the disruption, and again after the recovery.
BEFORE = 4
AFTER = 4
#: One seed per run (per xdist worker) unless --openshell-seed gives it.
_RUN_SEED = secrets.randbelow(2**31)


@dataclass
class HistoryOutcome:
    """What the workload of one scenario recorded, and what the checker found."""

    seed: int
    path: Path | None = None
    operations: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: the timeline page drawn from the history
    timeline: Path | None = None
    #: the workload broke off (a thread died, the gateway never answered): no check was possible
    error: str | None = None


@dataclass
class ScenarioWorkload:
    """The workload of one scenario run; does nothing unless ``--openshell-workload``."""

    session: OpenShellSession
    gateway: GatewayHandle
    ssh: SshHelper
    key: str
    workload: ClientWorkload | None = None
    outcome: HistoryOutcome | None = None

    @property
    def enabled(self) -> bool:
        return self.session.settings.workload

    def begin(self) -> None:
        """Start the threads and let them work a little before the disruption."""
        if not self.enabled:
            return
        settings = self.session.settings
        seed = settings.seed if settings.seed is not None else _RUN_SEED
        self.outcome = HistoryOutcome(seed=seed)
        self.workload = ClientWorkload(
            self.session, self.gateway, self.ssh, scenario=self.key, seed=seed
        )
        self.workload.start()
        self.workload.progress(BEFORE, timeout=settings.api_timeout * 2)

    def finish(self, run: ScenarioRun, held: HeldSession | None = None) -> HistoryOutcome | None:
        """After the recovery: more work, stop, observe, check, write the history and its
        timeline, tidy up. ``held``: the session held open across the scenario (its stall)."""
        workload, outcome = self.workload, self.outcome
        if workload is None or outcome is None:
            return None
        settings = self.session.settings
        if run.started_at is not None and run.disrupted_at is not None:
            workload.event("disruption", workload.at(run.started_at), workload.at(run.disrupted_at))
        if run.disrupted_at is not None and run.recovered_at is not None:
            workload.event(
                "gateway down", workload.at(run.disrupted_at), workload.at(run.recovered_at)
            )
            workload.event("API answers", workload.at(run.recovered_at))
        try:
            if run.recovered:
                workload.progress(AFTER, timeout=settings.recovery_timeout)
        except OpenShellError as exc:
            outcome.error = str(exc)
        try:
            workload.stop()
        except WorkloadError as exc:
            outcome.error = str(exc)
        if held is not None:
            _held_stall(workload, held)
        outcome.operations = workload.operations
        try:
            if outcome.error is None and run.recovered:
                workload.observe(within=settings.recovery_timeout, settle=settings.settle)
                outcome.violations = check(workload.history)
        except OpenShellError as exc:
            outcome.error = f"observing the gateway after recovery failed: {exc}"
        finally:
            directory = settings.artifacts / "history"
            private_directory(directory)
            outcome.path = directory / f"{self.key}.jsonl"
            dump(workload.history, outcome.path)
            findings = [outcome.error] if outcome.error else [str(v) for v in outcome.violations]
            outcome.timeline = directory / f"{self.key}.html"
            write_private(
                outcome.timeline,
                render(
                    workload.history,
                    title=f"{self.key}: {outcome.operations} operations, "
                    f"{len(outcome.violations)} violations of P18",
                    verdict=findings or ["nothing acknowledged was lost"],
                ),
            )
            workload.remove()
        return outcome


def _held_stall(workload: ClientWorkload, held: HeldSession) -> None:
    """The longest gap in the held session's output while the workload ran, as a span (to the
    end when its output stopped for good)."""
    start = time.monotonic() - workload.now()
    times = [start, *(at for at, _ in list(held.arrivals) if at >= start), time.monotonic()]
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(times)]
    length, begin, end = max(gaps)
    if length > 1.0:  # the remote side prints a line every 0.2 s
        what = "held session stall" if held.alive else "held session stall (ended)"
        workload.event(what, workload.at(begin), workload.at(end))
