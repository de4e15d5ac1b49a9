"""Property 18 in the conformance run: client threads work on the gateway before, during and after
the scenario's disruption (``--openshell-workload``), and their history is checked after recovery.

The history goes to ``<artefacts>/history/<scenario>.jsonl`` whatever the outcome; the workload's
sandboxes are deleted once it is checked, so the other properties see the suite's own workload
alone.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from openshell_core.errors import OpenShellError
from pytest_openshell.artefacts import private_directory
from pytest_openshell.drivers import GatewayHandle
from pytest_openshell.fixtures import SshHelper
from pytest_openshell.history import Violation, check, dump
from pytest_openshell.scenarios import ScenarioRun
from pytest_openshell.session import OpenShellSession
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

    def finish(self, run: ScenarioRun) -> HistoryOutcome | None:
        """After the recovery: more work, stop, observe, check, write the history, tidy up."""
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
            workload.remove()
        return outcome
