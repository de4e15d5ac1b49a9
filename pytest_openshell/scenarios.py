"""Lifecycle scenarios: how a gateway is disrupted, and how a user recovers it.

Each :class:`Scenario` has a stable key (the names of CONFORMANCE.md), a ``disrupt`` step made of
plain engine and driver operations, and a ``recover`` step done the way a user would (often
``gateway start``; nothing at all when Docker's restart policy should bring it back). The plugin
times each run: ``recovery_seconds`` from the end of the disruption, ``downtime_seconds`` from its
start, until the gateway's API answers again.

Downstream projects add scenarios with the ``pytest_openshell_scenarios`` hook.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openshell_core.engine import Engine

if TYPE_CHECKING:
    from pytest_openshell.artefacts import Artefacts
    from pytest_openshell.drivers import GatewayDriver, GatewayHandle

log = logging.getLogger("openshell.plugin")


class Capability(enum.Enum):
    """What a scenario needs from the engine beyond ordinary container operations."""

    #: stop, start and SIGKILL the Docker daemon itself (only an engine we own allows it)
    DAEMON_CONTROL = "daemon-control"


@dataclass
class ScenarioRun:
    """One execution of a scenario against one gateway; what tests and hooks get to see."""

    scenario: Scenario
    gateway: GatewayHandle
    driver: GatewayDriver
    engine: Engine
    artefacts: Artefacts | None = None
    #: free-form facts the steps record (old container id, errors they expected, ...)
    notes: dict[str, Any] = field(default_factory=dict)
    #: ``time.monotonic()`` when the disruption began, when it ended, when the API answered again
    started_at: float | None = None
    disrupted_at: float | None = None
    recovered_at: float | None = None
    #: the error a recovery step raised (tests decide whether that is a failure)
    recovery_error: Exception | None = None
    #: why the wait for the API stopped early (the gateway is down and nothing will bring it back)
    gave_up: str | None = None

    @property
    def recovery_seconds(self) -> float | None:
        """From the end of the disruption until the API answered (None: it did not)."""
        if self.recovered_at is None or self.disrupted_at is None:
            return None
        return self.recovered_at - self.disrupted_at

    @property
    def downtime_seconds(self) -> float | None:
        """From the start of the disruption until the API answered: for daemon scenarios, whose
        disruption is also their recovery, this is the figure to compare with the floor."""
        if self.recovered_at is None or self.started_at is None:
            return None
        return self.recovered_at - self.started_at

    @property
    def recovered(self) -> bool:
        return self.recovered_at is not None


Step = Callable[[ScenarioRun], None]


def _nothing(run: ScenarioRun) -> None:
    """No user action: Docker's restart policy or the gateway itself must bring things back."""


@dataclass(frozen=True)
class Scenario:
    """A named disruption and its recovery.

    :param key: stable name used in test ids, markers, reports.
    :param core: part of the default set.
    :param negative: a control whose state must NOT survive (proves the checks can fail).
    :param needs: capabilities the engine must have; otherwise tests skip with the reason.
    :param exclusive: disturbs every gateway on the engine, so it runs with the engine to itself.
    """

    key: str
    description: str
    disrupt: Step
    recover: Step = _nothing
    core: bool = False
    negative: bool = False
    needs: frozenset[Capability] = frozenset()
    exclusive: bool = False
    #: driver methods beyond the four verbs of :class:`GatewayDriver` that the steps call
    driver_methods: tuple[str, ...] = ()

    def missing_capabilities(self, engine: Engine, driver: object) -> list[str]:
        """Why this scenario cannot run here (empty when it can)."""
        missing = [
            f"scenario {self.key!r} needs the gateway driver to provide {method}(); "
            f"{type(driver).__name__} does not"
            for method in self.driver_methods
            if not callable(getattr(driver, method, None))
        ]
        if Capability.DAEMON_CONTROL in self.needs and not engine.can_restart:
            missing.append(
                f"scenario {self.key!r} restarts the Docker daemon, and the engine at "
                f"{engine.host} ({engine.source}) is not one pytest-openshell owns; run with "
                "--openshell-engine=private"
            )
        return missing


# -- the steps --------------------------------------------------------------------------------


def _stop(run: ScenarioRun) -> None:
    run.driver.stop(run.gateway)


def _start(run: ScenarioRun) -> None:
    run.driver.start(run.gateway)


def _kill_and_remove_network(run: ScenarioRun) -> None:
    """`docker kill` the gateway, then take its network away, as upstream's e2e test does."""
    engine, gateway = run.engine, run.gateway
    engine.kill_container(gateway.container_name)
    network = engine.inspect_network(gateway.network_name)
    if network is not None:
        for endpoint in network.get("Containers") or {}:
            engine.disconnect_network(gateway.network_name, endpoint)
        engine.remove_network(gateway.network_name)
    run.notes["removed_network_id"] = network["Id"] if network else None


def _remove_container(run: ScenarioRun) -> None:
    if run.artefacts is not None:
        run.artefacts.capture("before docker rm")  # the container's log goes with it
    run.notes["old_container"] = run.engine.inspect_container(run.gateway.container_name)
    run.engine.remove_container(run.gateway.container_name, force=True)


def _start_upgraded(run: ScenarioRun) -> None:
    run.driver.start(run.gateway, image=run.gateway.upgrade_image)


def _restart_daemon(run: ScenarioRun) -> None:
    run.engine.restart_daemon()


def _crash_daemon(run: ScenarioRun) -> None:
    run.engine.crash_daemon()


def _kill_daemon(run: ScenarioRun) -> None:
    run.engine.kill_daemon()


def _start_engine(run: ScenarioRun) -> None:
    """What the user (or systemd) does after the daemon died: ``pytest-openshell engine start``."""
    run.engine.start_daemon()


def _start_while_running(run: ScenarioRun) -> None:
    run.notes["before"] = run.engine.inspect_container(run.gateway.container_name)


def _reschedule_sandboxes(run: ScenarioRun) -> None:
    """Behind the gateway's back: remove one running sandbox's container, stop another's."""
    sandboxes = list(run.driver.sandbox_containers(run.gateway, running=True))  # type: ignore[attr-defined]
    removed, stopped = [*sandboxes, None, None][:2]
    if removed:
        run.engine.remove_container(removed, force=True)
    if stopped:
        run.engine.stop_container(stopped, timeout=5)
    run.notes["removed_sandbox_container"] = removed
    run.notes["stopped_sandbox_container"] = stopped


#: Seconds the gateway gets to notice sandbox containers changed behind its back and mend them
#: (the reference gateway reconciles every 2 s).
RESCHEDULE_WAIT = 30.0


def _await_sandboxes_back(run: ScenarioRun) -> None:
    """The gateway's own recovery: both containers run again (the removed one made anew)."""
    notes = run.notes
    wanted = {
        str(name)
        for name in (notes.get("removed_sandbox_container"), notes.get("stopped_sandbox_container"))
        if name
    }
    deadline = time.monotonic() + RESCHEDULE_WAIT
    while True:
        running = set(run.driver.sandbox_containers(run.gateway, running=True))  # type: ignore[attr-defined]
        if wanted <= running:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the gateway did not bring back {sorted(wanted - running)} within "
                f"{RESCHEDULE_WAIT:.0f} s"
            )
        time.sleep(0.25)


def _forget_host_metadata(run: ScenarioRun) -> None:
    run.driver.stop(run.gateway)
    run.driver.forget(run.gateway)  # type: ignore[attr-defined]


def _auto_bootstrap(run: ScenarioRun) -> None:
    created = run.driver.auto_bootstrap(run.gateway)  # type: ignore[attr-defined]
    run.notes.setdefault("created_sandboxes", []).append(created)


def _failing_resume(run: ScenarioRun) -> None:
    """Stop, then a resume that fails (its readiness deadline cannot be met)."""
    run.driver.stop(run.gateway)
    try:
        run.driver.start_failing(run.gateway)  # type: ignore[attr-defined]
    except Exception as exc:
        run.notes["resume_error"] = exc
        run.notes["after_failure"] = {
            "container": run.engine.inspect_container(run.gateway.container_name),
            "network": run.engine.inspect_network(run.gateway.network_name),
            "volume": run.engine.inspect_volume(run.gateway.volume_name),
        }
    else:
        run.notes["resume_error"] = None


def _recreate(run: ScenarioRun) -> None:
    run.driver.recreate(run.gateway)  # type: ignore[attr-defined]


def _destroy_and_deploy(run: ScenarioRun) -> None:
    run.driver.destroy(run.gateway)
    run.driver.deploy(run.gateway.spec)


BUILTIN: tuple[Scenario, ...] = (
    Scenario("stop-start", "gateway stop, then gateway start", _stop, _start, core=True),
    Scenario(
        "kill",
        "docker kill the gateway and remove its network, then gateway start",
        _kill_and_remove_network,
        _start,
        core=True,
    ),
    Scenario(
        "remove-keep-volume",
        "docker rm -f the gateway (the volume stays), then gateway start",
        _remove_container,
        _start,
        core=True,
    ),
    Scenario(
        "image-upgrade",
        "docker rm -f the gateway, then gateway start from the upgrade image on the same volume",
        _remove_container,
        _start_upgraded,
        core=True,
    ),
    Scenario(
        "docker-restart",
        "the Docker daemon is stopped and started; nothing else",
        _restart_daemon,
        core=True,
        needs=frozenset({Capability.DAEMON_CONTROL}),
        exclusive=True,
    ),
    Scenario(
        "docker-crash",
        "the daemon, containerd, shims and containers are SIGKILLed, then "
        "the daemon is started; nothing else",
        _crash_daemon,
        needs=frozenset({Capability.DAEMON_CONTROL}),
        exclusive=True,
    ),
    Scenario(
        "docker-daemon-kill",
        "dockerd and containerd are SIGKILLed, the shims and containers left running (an OOM "
        "kill, systemctl kill); then the engine is started; nothing else",
        _kill_daemon,
        _start_engine,
        needs=frozenset({Capability.DAEMON_CONTROL}),
        exclusive=True,
    ),
    Scenario(
        "sandbox-reschedule",
        "a sandbox container is removed and another stopped behind the gateway's back",
        _reschedule_sandboxes,
        _await_sandboxes_back,
        driver_methods=("sandbox_containers",),
    ),
    Scenario(
        "start-while-running",
        "gateway start on a running gateway (a no-op)",
        _start_while_running,
        _start,
    ),
    Scenario(
        "auto-bootstrap",
        "host metadata deleted and the gateway stopped; sandbox create brings it back",
        _forget_host_metadata,
        _auto_bootstrap,
        driver_methods=("forget", "auto_bootstrap"),
    ),
    Scenario(
        "resume-failure",
        "a resume is made to fail; the next gateway start resumes",
        _failing_resume,
        _start,
        driver_methods=("start_failing",),
    ),
    Scenario(
        "recreate",
        "gateway start --recreate (negative control: state must NOT survive)",
        _nothing,
        _recreate,
        driver_methods=("recreate",),
        negative=True,
    ),
    Scenario(
        "destroy",
        "gateway destroy, then a fresh deploy (negative control)",
        _nothing,
        _destroy_and_deploy,
        negative=True,
    ),
)


def select(available: dict[str, Scenario], selection: str) -> list[Scenario]:
    """The scenarios a ``--openshell-scenarios`` value names ('core', 'all' or keys)."""
    text = selection.strip()
    if text == "core":
        return [scenario for scenario in available.values() if scenario.core]
    if text == "all":
        return list(available.values())
    chosen: list[Scenario] = []
    for key in (part.strip() for part in text.split(",")):
        if not key:
            continue
        if key == "core":
            chosen.extend(s for s in available.values() if s.core and s not in chosen)
            continue
        if key not in available:
            known = ", ".join(available)
            raise KeyError(f"unknown scenario {key!r}; known scenarios: {known}")
        if available[key] not in chosen:
            chosen.append(available[key])
    return chosen


#: Seconds a gateway may look down for good before the wait gives up on it: a daemon that just
#: came back may not have restarted its ``unless-stopped`` containers yet.
DOWN_GRACE = 10.0


def disrupt(
    run: ScenarioRun,
    *,
    on_disrupted: Callable[[ScenarioRun], None] = lambda r: None,
    at_moment: Callable[[], None] = lambda: None,
) -> None:
    """Run the scenario's disruption (artefacts are captured first: it may destroy logs).
    ``at_moment`` waits for the moment to strike at, right before the disruption begins."""
    scenario = run.scenario
    if run.artefacts is not None:
        run.artefacts.capture(f"before {scenario.key}")
    at_moment()
    log.info("scenario %s: disrupting gateway %s", scenario.key, run.gateway.name)
    run.started_at = time.monotonic()
    scenario.disrupt(run)
    run.disrupted_at = time.monotonic()
    on_disrupted(run)


def recover(
    run: ScenarioRun,
    *,
    api_ready: Callable[[], bool],
    deadline: float,
    down_reason: Callable[[], str | None] = lambda: None,
    poll: float = 0.25,
) -> None:
    """Run the scenario's recovery step, then wait until the API answers (``run.recovered_at``).

    The wait ends early, with ``run.gave_up`` saying why, when waiting cannot help: the recovery
    step failed, or ``down_reason`` has said for :data:`DOWN_GRACE` seconds that the gateway is
    down and nothing will bring it back. Otherwise it lasts at most ``deadline`` seconds from the
    end of the disruption.
    """
    scenario = run.scenario
    if run.disrupted_at is None:
        raise RuntimeError(f"scenario {scenario.key}: recover() before disrupt()")
    log.info("scenario %s: recovering", scenario.key)
    try:
        scenario.recover(run)
    except Exception as exc:
        run.recovery_error = exc
        run.gave_up = f"the recovery step failed: {exc}"
        log.info("scenario %s: recovery step failed: %s", scenario.key, exc)
    end = run.disrupted_at + deadline
    down_since: float | None = None
    while run.gave_up is None:
        if api_ready():
            run.recovered_at = time.monotonic()
            log.info(
                "scenario %s: gateway answers %.1f s after the disruption",
                scenario.key,
                run.recovery_seconds,
            )
            break
        now = time.monotonic()
        if now >= end:
            run.gave_up = f"the gateway API did not answer within {deadline:.0f} s"
            break
        reason = down_reason()
        if reason is None:
            down_since = None
        elif down_since is None:
            down_since = now
        elif now - down_since >= DOWN_GRACE:
            run.gave_up = reason
            break
        time.sleep(poll)
    if run.artefacts is not None:
        run.artefacts.capture(f"after {scenario.key}")
