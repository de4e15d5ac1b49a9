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

import grpc

from openshell_core.errors import OpenShellError, ReadinessTimeout
from openshell_core.retry import poll_until
from pytest_openshell.artefacts import private_directory, write_private
from pytest_openshell.drivers import GatewayHandle
from pytest_openshell.fixtures import HeldSession, SshHelper
from pytest_openshell.history import Kind, Violation, check, dump
from pytest_openshell.scenarios import ScenarioRun
from pytest_openshell.session import OpenShellSession
from pytest_openshell.strike import Moment, choose
from pytest_openshell.timeline import render
from pytest_openshell.workload import ClientWorkload, WorkloadError

#: Appends acknowledged before the disruption, and again after the recovery.
BEFORE = 4
AFTER = 4
#: Seconds the disruption waits for its moment (then it strikes anyway, and says so).
STRIKE_WAIT = 60.0
#: One seed per run (per xdist worker) unless --openshell-seed gives it.
_RUN_SEED = secrets.randbelow(2**31)


@dataclass
class HistoryOutcome:
    """What the workload of one scenario recorded, and what the checker found."""

    seed: int
    path: Path | None = None
    operations: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: the moment the scenario struck at
    moment: Moment | None = None
    #: the timeline page drawn from the history
    timeline: Path | None = None
    #: the workload broke off (the gateway never answered after recovery): no check was possible
    error: str | None = None
    #: a client thread died: a fault of the harness, not of the gateway (a test error)
    thread_error: str | None = None


@dataclass
class ScenarioWorkload:
    """The workload of one scenario run; does nothing unless ``--openshell-workload``."""

    session: OpenShellSession
    gateway: GatewayHandle
    ssh: SshHelper
    key: str
    workload: ClientWorkload | None = None
    #: the run's name for this scenario run (its history and timeline files, its title): the
    #: key, with the transport when the run has several; default: the key
    name: str = ""
    outcome: HistoryOutcome | None = None
    #: the operation in flight the strike aimed at: (process, invoked)
    _target: tuple[str, float] | None = None

    @property
    def enabled(self) -> bool:
        return self.session.settings.workload

    @property
    def label(self) -> str:
        return self.name or str(self.key)

    def begin(self) -> None:
        """Start the threads and let them work a little before the disruption."""
        if not self.enabled:
            return
        settings = self.session.settings
        seed = settings.seed if settings.seed is not None else _RUN_SEED
        self.outcome = HistoryOutcome(seed=seed)
        self.workload = ClientWorkload(
            self.session,
            self.gateway,
            self.ssh,
            scenario=self.label,
            seed=seed,
            transport=self.gateway.spec.options.transport,
        )
        self.workload.start()
        self.workload.progress(BEFORE, timeout=settings.api_timeout * 2)

    def strike(self) -> None:
        """Wait (briefly) for the moment this scenario strikes at; the disruption follows at once.
        A moment that does not come within :data:`STRIKE_WAIT` seconds is recorded as missed."""
        workload, outcome = self.workload, self.outcome
        if workload is None or outcome is None:
            return
        moment = self.session.settings.strike or choose(outcome.seed, self.key)
        outcome.moment = moment

        def current() -> str | None:
            if moment is Moment.SEEDING:
                seeding = [s.name for s in workload.listed() if s.phase == "PROVISIONING"]
                return f"seeding {seeding[0]}" if seeding else None
            flying = workload.in_flight()
            if moment is Moment.BETWEEN:
                return None if flying else "between operations"
            kind = Kind.CREATE if moment is Moment.CREATE else Kind.APPEND
            for process, (what, sandbox, invoked) in flying.items():
                if what is kind:
                    self._target = (process, invoked)
                    return f"{process} {what.value} {sandbox} invoked at {invoked:.2f} s"
            return None

        try:
            found = poll_until(
                current,
                lambda seen: seen is not None,
                timeout=STRIKE_WAIT,
                what=f"the moment {moment.value}",
                retry_on=(OpenShellError, grpc.RpcError),
                schedule=(0.02, 1.0, 0.02),
            )
            workload.event(f"strike during {moment.value}: {found}")
        except ReadinessTimeout:
            workload.event(f"strike during {moment.value}: missed (not within {STRIKE_WAIT:g} s)")

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
            outcome.thread_error = str(exc)
        if held is not None:
            _held_stall(workload, held)
        if self._target is not None and run.started_at is not None:
            _strike_result(workload, self._target, workload.at(run.started_at))
        outcome.operations = workload.operations
        try:
            if outcome.error is None and outcome.thread_error is None and run.recovered:
                workload.observe(within=settings.recovery_timeout, settle=settings.settle)
                outcome.violations = check(workload.history)
        except OpenShellError as exc:
            outcome.error = f"observing the gateway after recovery failed: {exc}"
        finally:
            directory = settings.artifacts / "history"
            private_directory(directory)
            outcome.path = directory / f"{self.label}.jsonl"
            dump(workload.history, outcome.path)
            broke = [e for e in (outcome.error, outcome.thread_error) if e]
            findings = broke or [str(v) for v in outcome.violations]
            outcome.timeline = directory / f"{self.label}.html"
            write_private(
                outcome.timeline,
                render(
                    workload.history,
                    title=f"{self.label}: {outcome.operations} operations, "
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


def _strike_result(workload: ClientWorkload, target: tuple[str, float], began: float) -> None:
    """Whether the operation the strike aimed at was still in flight when the disruption began."""
    process, invoked = target
    for op in workload.history.operations:
        if op.process == process and abs(op.invoked - invoked) < 1e-6:
            hit = op.completed > began
            verdict = "hit" if hit else "missed"
            workload.event(
                f"strike {verdict} #{op.index} {op.kind.value} {op.sandbox} "
                f"({op.outcome.value}, completed {op.completed - began:+.2f} s from its start)",
                began,
            )
            return
