"""Lifecycle scenarios: how a gateway is disrupted, how a user recovers it, and what a user may
expect afterwards.

Each :class:`Scenario` has a stable key (the names of docs/conformance.md), a ``disrupt`` step
made of plain engine and driver operations, a ``recover`` step done the way a user would (often
``gateway start``; nothing at all when Docker's restart policy should bring it back), and its
:class:`Traits`: what becomes of the gateway's container and of each sandbox's container, whether
state must survive, whether a held SSH session carries on, whether it acts on the engine's daemon,
which driver abilities it needs. Checks select scenarios by traits (:class:`Applies`), never by
key, so a scenario a downstream project adds with the ``pytest_openshell_scenarios`` hook gets
every check its traits allow. The plugin times each run: ``recovery_seconds`` from the end of the
disruption, ``downtime_seconds`` from its start, until the gateway's API answers again.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from openshell_core.engine import Engine
from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import poll_until
from pytest_openshell.drivers import (
    Ability,
    CanAutoBootstrap,
    CanFailResume,
    CanForgetHostFiles,
    CanRecreate,
    ListsSandboxContainers,
    SetsTokenLifetime,
)
from pytest_openshell.options import GatewayOptions

if TYPE_CHECKING:
    from pytest_openshell.artefacts import Artefacts
    from pytest_openshell.drivers import GatewayDriver, GatewayHandle

log = logging.getLogger("openshell.plugin")


# -- traits -----------------------------------------------------------------------------------


class GatewayFate(enum.Enum):
    """What a scenario does to the gateway's container."""

    #: it keeps running throughout
    KEPT = "kept"
    #: the same container stops (or dies) and starts again
    RESTARTED = "restarted"
    #: it is removed and a new one is made on the same volume
    RECREATED = "recreated"
    #: it is removed with its volume; what answers afterwards is a new gateway (negative controls)
    REMOVED = "removed"


class SandboxFate(enum.Enum):
    """What a scenario does to a sandbox's container (files outside ``/sandbox`` and processes
    live exactly as long as the container)."""

    #: keeps running: its processes and its own files survive
    KEPT = "kept"
    #: the same container restarts: its own files survive, its processes do not
    RESTARTED = "restarted"
    #: a new container on the same workspace volume: only ``/sandbox`` survives
    RECREATED = "recreated"
    #: gone with the gateway's state (negative controls)
    REMOVED = "removed"


class StateOutcome(enum.Enum):
    """Whether the gateway's state (sandboxes, workspaces, secrets) must survive the scenario."""

    SURVIVES = "survives"
    #: must NOT survive: a negative control, proof that the checks can fail
    LOST = "lost"


class HeldSessionFate(enum.Enum):
    """What becomes of an SSH session held open across the scenario."""

    #: it pauses and carries on, byte for byte (the sandbox kept running)
    CARRIES_ON = "carries-on"
    #: it ends cleanly, without hanging, and a new session works
    ENDS = "ends"


class EngineScope(enum.Enum):
    """What of the engine a scenario acts on."""

    #: only the gateway's own objects: the engine is shared with other gateways meanwhile
    GATEWAY = "gateway"
    #: the daemon itself: it needs an engine the plugin owns, and has the engine to itself from
    #: its disruption to its recovery (every gateway on it is disturbed)
    DAEMON = "daemon"


@dataclass(frozen=True, kw_only=True)
class Traits:
    """What a user may expect of a scenario: the checks that apply to it follow from these.

    :param gateway: what becomes of the gateway's container.
    :param sandboxes: what becomes of every sandbox's container (unless ``some_sandboxes``).
    :param state: whether state must survive (``LOST``: a negative control).
    :param held_session: what becomes of an SSH session held open across it.
    :param engine: ``DAEMON`` for a disruption of the engine's daemon itself.
    :param abilities: what it needs of the gateway driver beyond the four verbs.
    :param some_sandboxes: fates it deals to particular sandboxes, whose containers it names in
        :attr:`ScenarioRun.sandbox_fates` (needs :attr:`Ability.SANDBOX_CONTAINERS`).
    :param failed_resume: it makes a resume fail before the recovering start, and records what
        that left in :attr:`ScenarioRun.failed_resume` (property 10).
    :param outlives_tokens: the gateway stays down longer than a sandbox token lives (it is
        deployed with tokens of :data:`SHORT_TOKEN_LIFETIME` seconds; needs
        :attr:`Ability.TOKEN_LIFETIME`), so every supervisor's token has expired when it comes
        back (property 14).
    """

    gateway: GatewayFate
    sandboxes: SandboxFate
    state: StateOutcome
    held_session: HeldSessionFate
    engine: EngineScope = EngineScope.GATEWAY
    abilities: frozenset[Ability] = frozenset()
    some_sandboxes: frozenset[SandboxFate] = frozenset()
    failed_resume: bool = False
    outlives_tokens: bool = False

    @property
    def sandbox_fates(self) -> frozenset[SandboxFate]:
        """Every fate a sandbox's container may meet in this scenario."""
        return frozenset({self.sandboxes, *self.some_sandboxes})

    def problems(self) -> list[str]:
        """Why these traits contradict each other (empty when they do not)."""
        found = []
        lost = self.state is StateOutcome.LOST
        if lost != (self.gateway is GatewayFate.REMOVED):
            found.append(
                "state=StateOutcome.LOST goes with gateway=GatewayFate.REMOVED and only with it "
                f"(got state {self.state.value}, gateway {self.gateway.value}): state is lost "
                "with the gateway's volume, and a gateway whose volume is kept keeps it"
            )
        if lost != (self.sandboxes is SandboxFate.REMOVED):
            found.append(
                "state=StateOutcome.LOST goes with sandboxes=SandboxFate.REMOVED and only with it "
                f"(got state {self.state.value}, sandboxes {self.sandboxes.value})"
            )
        if SandboxFate.REMOVED in self.some_sandboxes:
            found.append(
                "some_sandboxes may not contain SandboxFate.REMOVED: a sandbox removed for good "
                "is lost state (declare state=StateOutcome.LOST for the whole scenario)"
            )
        if self.some_sandboxes and Ability.SANDBOX_CONTAINERS not in self.abilities:
            found.append(
                "some_sandboxes needs abilities to include Ability.SANDBOX_CONTAINERS: the checks "
                "must know which sandbox's container met which fate"
            )
        if self.held_session is HeldSessionFate.CARRIES_ON and (
            lost or self.sandbox_fates != {SandboxFate.KEPT}
        ):
            found.append(
                "held_session=HeldSessionFate.CARRIES_ON needs every sandbox's container kept "
                "and state that survives (got sandboxes "
                f"{', '.join(sorted(f.value for f in self.sandbox_fates))}): a session cannot "
                "carry on when the sandbox's end of it is gone; declare HeldSessionFate.ENDS"
            )
        if self.outlives_tokens and Ability.TOKEN_LIFETIME not in self.abilities:
            found.append(
                "outlives_tokens=True needs abilities to include Ability.TOKEN_LIFETIME: the "
                "gateway must be deployed with tokens that expire, and the wait must know when"
            )
        if self.outlives_tokens and self.gateway not in (
            GatewayFate.RESTARTED,
            GatewayFate.RECREATED,
        ):
            found.append(
                "outlives_tokens=True needs gateway=GatewayFate.RESTARTED or RECREATED: only a "
                f"gateway that is down can be outlasted (got gateway {self.gateway.value})"
            )
        if self.failed_resume and self.gateway is not GatewayFate.RECREATED:
            found.append(
                "failed_resume=True needs gateway=GatewayFate.RECREATED: a failed resume removes "
                "the container, so the next start makes a new one"
            )
        return found

    def describe(self) -> str:
        """One line, for reports: ``gateway restarted, sandboxes kept, ...``."""
        sandboxes = self.sandboxes.value
        if self.some_sandboxes:
            some = "/".join(sorted(fate.value for fate in self.some_sandboxes))
            sandboxes = f"{sandboxes} (some {some})"
        parts = [
            f"gateway {self.gateway.value}",
            f"sandboxes {sandboxes}",
            f"state {self.state.value}",
            f"held session {self.held_session.value}",
        ]
        if self.engine is EngineScope.DAEMON:
            parts.append("daemon level")
        if self.abilities:
            parts.append("needs " + ", ".join(sorted(a.value for a in self.abilities)))
        if self.failed_resume:
            parts.append("a resume fails first")
        if self.outlives_tokens:
            parts.append("down past the tokens' life")
        return ", ".join(parts)


#: What a scenario without traits is told to declare.
HOW_TO_DECLARE = (
    "declare them: Scenario(key, description, disrupt, recover, traits=Traits("
    "gateway=GatewayFate.<{gateway}>, sandboxes=SandboxFate.<{sandboxes}>, "
    "state=StateOutcome.<{state}>, held_session=HeldSessionFate.<{session}>)); optional: "
    "engine=EngineScope.DAEMON for a disruption of the Docker daemon itself, "
    "abilities=frozenset({{Ability...}}) for what it needs of the gateway driver. The names come "
    "from pytest_openshell; docs/conformance.md says what each one means and which checks follow"
).format(
    gateway="|".join(f.name for f in GatewayFate),
    sandboxes="|".join(f.name for f in SandboxFate),
    state="|".join(f.name for f in StateOutcome),
    session="|".join(f.name for f in HeldSessionFate),
)


@dataclass(frozen=True)
class Applies:
    """Which scenarios a check applies to, by their traits. A field left ``None`` accepts any
    value; a set accepts any of its members.

    :param sandboxes: every fate the scenario may deal a sandbox's container must be one of these.
    """

    gateway: frozenset[GatewayFate] | None = None
    sandboxes: frozenset[SandboxFate] | None = None
    state: StateOutcome | None = None
    held_session: HeldSessionFate | None = None
    engine: EngineScope | None = None
    failed_resume: bool | None = None
    outlives_tokens: bool | None = None

    def matches(self, traits: Traits) -> bool:
        return (
            (self.gateway is None or traits.gateway in self.gateway)
            and (self.sandboxes is None or traits.sandbox_fates <= self.sandboxes)
            and (self.state is None or traits.state is self.state)
            and (self.held_session is None or traits.held_session is self.held_session)
            and (self.engine is None or traits.engine is self.engine)
            and (self.failed_resume is None or traits.failed_resume is self.failed_resume)
            and (self.outlives_tokens is None or traits.outlives_tokens is self.outlives_tokens)
        )

    @classmethod
    def of(cls, *args: Applies, **kwargs: Any) -> Applies:
        """From the arguments of an ``openshell_traits`` marker: an :class:`Applies`, or its
        fields as keywords (a single value where a set is expected is taken as a set of one)."""
        if args:
            if len(args) != 1 or kwargs or not isinstance(args[0], Applies):
                raise TypeError("openshell_traits takes one Applies(...) or its fields as keywords")
            return args[0]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"openshell_traits: unknown trait {unknown[0]!r}; known: {sorted(known)}"
            )
        for name in ("gateway", "sandboxes"):
            value = kwargs.get(name)
            if isinstance(value, enum.Enum):
                kwargs[name] = frozenset({value})
            elif value is not None:
                kwargs[name] = frozenset(value)
        return cls(**kwargs)

    def describe(self) -> str:
        """One line, for docs and reports: ``state survives, gateway kept or restarted``."""
        parts = []
        if self.state is not None:
            parts.append(f"state {self.state.value}")
        if self.gateway is not None:
            parts.append("gateway " + " or ".join(_in_order(self.gateway)))
        if self.sandboxes is not None:
            parts.append("sandboxes only " + " or ".join(_in_order(self.sandboxes)))
        if self.held_session is not None:
            parts.append(f"held session {self.held_session.value}")
        if self.engine is not None:
            parts.append(f"{self.engine.value} level")
        if self.failed_resume is not None:
            parts.append("a resume fails first" if self.failed_resume else "no failed resume")
        if self.outlives_tokens is not None:
            parts.append(
                "down past the tokens' life" if self.outlives_tokens else "tokens not outlived"
            )
        return ", ".join(parts) or "every scenario"


def _in_order(values: Iterable[enum.Enum]) -> list[str]:
    chosen = set(values)
    return [member.value for member in type(next(iter(chosen))) if member in chosen]


@dataclass
class FailedResume:
    """What a resume made to fail left behind (the ``failed_resume`` trait; property 10)."""

    #: the error it raised (None: it did not fail, which the checks report)
    error: Exception | None
    #: ``docker inspect`` of the gateway's container, network and volume right after it (None: gone)
    container: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    volume: dict[str, Any] | None = None


@dataclass
class ScenarioRun:
    """One execution of a scenario against one gateway; what tests and hooks get to see."""

    scenario: Scenario
    gateway: GatewayHandle
    driver: GatewayDriver
    engine: Engine
    artefacts: Artefacts | None = None
    #: free-form facts the steps record (old container id, ...)
    notes: dict[str, Any] = field(default_factory=dict)
    #: sandbox containers the scenario dealt with one by one (``Traits.some_sandboxes``)
    sandbox_fates: dict[str, SandboxFate] = field(default_factory=dict)
    #: sandboxes the scenario itself created (they are not the workload's)
    created_sandboxes: list[str] = field(default_factory=list)
    #: the gateway image the recovery started, when not the gateway's own (an upgrade)
    image: str | None = None
    #: what a resume made to fail left (``Traits.failed_resume``)
    failed_resume: FailedResume | None = None
    #: ``time.monotonic()`` when the disruption began, when it ended, when the API answered again
    started_at: float | None = None
    disrupted_at: float | None = None
    recovered_at: float | None = None
    #: the error a recovery step raised (tests decide whether that is a failure)
    recovery_error: Exception | None = None
    #: why the wait for the API stopped early (the gateway is down and nothing will bring it back)
    gave_up: str | None = None

    @property
    def traits(self) -> Traits:
        return self.scenario.declared_traits

    def sandbox_fate(self, container: str | None) -> SandboxFate:
        """What the scenario did to the sandbox container ``container`` (None: not known by
        name; then the fate every sandbox meets)."""
        if container is not None and container in self.sandbox_fates:
            return self.sandbox_fates[container]
        return self.traits.sandboxes

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


class ScenarioError(Exception):
    """A scenario that cannot be used as declared (the plugin reports it as a usage error)."""


@dataclass(frozen=True)
class Scenario:
    """A named disruption, its recovery, and what a user may expect of it.

    :param key: stable name used in test ids, markers, reports.
    :param traits: what a user may expect (which checks apply follows from them); a scenario
        without traits is refused at collection.
    :param core: part of the default set (``--openshell-scenarios=core``).
    """

    key: str
    description: str
    disrupt: Step
    recover: Step = _nothing
    traits: Traits | None = None
    core: bool = False
    #: why it cannot run with this driver here (None: it can), e.g. a cluster with one node
    precondition: Callable[[object], str | None] | None = None

    @property
    def declared_traits(self) -> Traits:
        """The traits (a scenario without them is refused before it is used)."""
        if self.traits is None:
            raise ScenarioError(self.problems()[0])
        return self.traits

    @property
    def negative(self) -> bool:
        """A control whose state must NOT survive (proves the checks can fail)."""
        return self.declared_traits.state is StateOutcome.LOST

    @property
    def exclusive(self) -> bool:
        """Disturbs every gateway on the engine, so it has the engine to itself meanwhile."""
        return self.declared_traits.engine is EngineScope.DAEMON

    def problems(self) -> list[str]:
        """Why this scenario cannot be used as declared (empty when it can), each saying what to
        declare instead."""
        if self.traits is None:
            return [
                f"scenario {self.key!r} declares no traits, so no check can tell whether it "
                f"applies; {HOW_TO_DECLARE}"
            ]
        return [f"scenario {self.key!r}: {problem}" for problem in self.traits.problems()]

    def deploy_options(self, options: GatewayOptions) -> GatewayOptions:
        """What the gateway it disrupts is deployed with: ``options``, with sandbox tokens of
        :data:`SHORT_TOKEN_LIFETIME` seconds when it outlives them (unless a life is set)."""
        if self.declared_traits.outlives_tokens and not options.sandbox_token_ttl:
            return dataclasses.replace(options, sandbox_token_ttl=SHORT_TOKEN_LIFETIME)
        return options

    def missing_capabilities(
        self, engine: Engine, driver: object, options: GatewayOptions | None = None
    ) -> list[str]:
        """Why this scenario cannot run here (empty when it can), its gateway deployed with
        :meth:`deploy_options` of ``options`` (None: not asked)."""
        traits = self.declared_traits
        missing = [
            f"scenario {self.key!r} needs {ability.lacking(driver)}"
            for ability in sorted(traits.abilities, key=lambda a: a.value)
            if not ability.of(driver)
        ]
        if self.precondition is not None:
            reason = self.precondition(driver)
            if reason is not None:
                missing.append(f"scenario {self.key!r}: {reason}")
        if traits.outlives_tokens and options is not None and isinstance(driver, SetsTokenLifetime):
            deployed = self.deploy_options(options)
            if driver.token_lifetime(deployed) is None:
                missing.append(
                    f"scenario {self.key!r} keeps the gateway down past the life of its sandbox "
                    f"tokens, and a gateway of the {deployed.transport} transport gives its "
                    "supervisors none that expire (it dials each supervisor and signs every "
                    "connection with its handshake secret); run it with "
                    "--openshell-transport=supervisor"
                )
        if traits.engine is EngineScope.DAEMON and not engine.can_restart:
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
    run.image = run.gateway.upgrade_image
    run.driver.start(run.gateway, image=run.image)


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


def _needs(run: ScenarioRun, ability: Ability) -> ScenarioError:
    return ScenarioError(f"scenario {run.scenario.key!r} needs {ability.lacking(run.driver)}")


def _reschedule_sandboxes(run: ScenarioRun) -> None:
    """Behind the gateway's back: remove one running sandbox's container, stop another's."""
    driver = run.driver
    if not isinstance(driver, ListsSandboxContainers):
        raise _needs(run, Ability.SANDBOX_CONTAINERS)
    removed, stopped = [*driver.sandbox_containers(run.gateway, running=True), None, None][:2]
    if removed:
        run.engine.remove_container(removed, force=True)
        run.sandbox_fates[removed] = SandboxFate.RECREATED
    if stopped:
        run.engine.stop_container(stopped, timeout=5)
        run.sandbox_fates[stopped] = SandboxFate.RESTARTED


#: Seconds the gateway gets to notice sandbox containers changed behind its back and mend them
#: (the reference gateway reconciles every 2 s).
RESCHEDULE_WAIT = 30.0


def _await_sandboxes_back(run: ScenarioRun) -> None:
    """The gateway's own recovery: both containers run again (the removed one made anew)."""
    driver = run.driver
    if not isinstance(driver, ListsSandboxContainers):
        raise _needs(run, Ability.SANDBOX_CONTAINERS)
    wanted = set(run.sandbox_fates)
    poll_until(
        lambda: set(driver.sandbox_containers(run.gateway, running=True)),
        lambda running: wanted <= running,
        timeout=RESCHEDULE_WAIT,
        what=f"the sandbox containers {sorted(wanted)} running again",
        describe=lambda running: f"not running: {sorted(wanted - running)}",
    )


#: Seconds the sandbox tokens live on the gateway of a scenario that outlives them: short, as the
#: gateway stays down that long (the supervisors renew theirs every two thirds of it meanwhile).
SHORT_TOKEN_LIFETIME = 15.0
#: Seconds past the last token's expiry before the gateway is started: a token expires at its
#: ``exp`` second, read against the wall clock.
EXPIRY_MARGIN = 1.0


def _stop_past_token_lifetime(run: ScenarioRun) -> None:
    """``gateway stop``, then stay down until every token a supervisor holds has expired: none
    was issued after the stop, and each lives the gateway's token lifetime."""
    driver = run.driver
    if not isinstance(driver, SetsTokenLifetime):
        raise _needs(run, Ability.TOKEN_LIFETIME)
    lifetime = driver.token_lifetime(run.gateway.spec.options)
    if lifetime is None:
        raise ScenarioError(
            f"scenario {run.scenario.key!r} needs a gateway whose sandbox tokens expire; "
            f"{run.gateway.name} was deployed with none (deploy it with "
            "scenario.deploy_options(options), in the supervisor transport)"
        )
    driver.stop(run.gateway)
    stopped = time.time()
    expired = stopped + lifetime + EXPIRY_MARGIN
    run.notes["token_lifetime"] = lifetime
    run.notes["tokens_expired_at"] = expired
    log.info(
        "scenario %s: gateway %s stays down until its tokens expired (%.0f s)",
        run.scenario.key,
        run.gateway.name,
        expired - stopped,
    )
    # Waiting out a clock: nothing else is awaited, so nothing can die meanwhile.
    while (left := expired - time.time()) > 0:
        time.sleep(min(left, 1.0))
    run.notes["down_for"] = time.time() - stopped


def _forget_host_metadata(run: ScenarioRun) -> None:
    driver = run.driver
    if not isinstance(driver, CanForgetHostFiles):
        raise _needs(run, Ability.FORGET_HOST_FILES)
    driver.stop(run.gateway)
    driver.forget(run.gateway)


def _auto_bootstrap(run: ScenarioRun) -> None:
    driver = run.driver
    if not isinstance(driver, CanAutoBootstrap):
        raise _needs(run, Ability.AUTO_BOOTSTRAP)
    run.created_sandboxes.append(driver.auto_bootstrap(run.gateway))


def _failing_resume(run: ScenarioRun) -> None:
    """Stop, then a resume that fails (its readiness deadline cannot be met)."""
    driver = run.driver
    if not isinstance(driver, CanFailResume):
        raise _needs(run, Ability.FAIL_RESUME)
    driver.stop(run.gateway)
    try:
        driver.start_failing(run.gateway)
    except Exception as exc:
        run.failed_resume = FailedResume(
            exc,
            container=run.engine.inspect_container(run.gateway.container_name),
            network=run.engine.inspect_network(run.gateway.network_name),
            volume=run.engine.inspect_volume(run.gateway.volume_name),
        )
    else:
        run.failed_resume = FailedResume(None)


def _recreate(run: ScenarioRun) -> None:
    driver = run.driver
    if not isinstance(driver, CanRecreate):
        raise _needs(run, Ability.RECREATE)
    driver.recreate(run.gateway)


def _destroy_and_deploy(run: ScenarioRun) -> None:
    run.driver.destroy(run.gateway)
    run.driver.deploy(run.gateway.spec)


def on_docker(driver: object) -> str | None:
    """The precondition of a scenario that acts on Docker objects (the gateway's container,
    network, the daemon): the gateway must run on Docker (a driver says where in ``platform``)."""
    platform = getattr(driver, "platform", "docker")
    if platform == "docker":
        return None
    return (
        f"its steps or traits are about Docker objects (containers, the daemon), and this "
        f"gateway runs on {platform}"
    )


#: The traits most gateway-level scenarios share: only the gateway's container is touched, every
#: sandbox keeps running, and a held session pauses and carries on.
GATEWAY_ONLY = Traits(
    gateway=GatewayFate.RESTARTED,
    sandboxes=SandboxFate.KEPT,
    state=StateOutcome.SURVIVES,
    held_session=HeldSessionFate.CARRIES_ON,
)
#: A daemon restart or crash: every container restarts, a held session ends.
DAEMON_RESTART = Traits(
    gateway=GatewayFate.RESTARTED,
    sandboxes=SandboxFate.RESTARTED,
    state=StateOutcome.SURVIVES,
    held_session=HeldSessionFate.ENDS,
    engine=EngineScope.DAEMON,
)
#: A negative control: the gateway and everything it held are gone; a new one answers.
WIPED = Traits(
    gateway=GatewayFate.REMOVED,
    sandboxes=SandboxFate.REMOVED,
    state=StateOutcome.LOST,
    held_session=HeldSessionFate.ENDS,
)
_NEW_CONTAINER = dataclasses.replace(GATEWAY_ONLY, gateway=GatewayFate.RECREATED)

BUILTIN: tuple[Scenario, ...] = (
    Scenario(
        "stop-start",
        "gateway stop, then gateway start",
        _stop,
        _start,
        traits=GATEWAY_ONLY,
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "kill",
        "docker kill the gateway and remove its network, then gateway start",
        _kill_and_remove_network,
        _start,
        traits=GATEWAY_ONLY,
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "remove-keep-volume",
        "docker rm -f the gateway (the volume stays), then gateway start",
        _remove_container,
        _start,
        traits=_NEW_CONTAINER,
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "image-upgrade",
        "docker rm -f the gateway, then gateway start from the upgrade image on the same volume",
        _remove_container,
        _start_upgraded,
        traits=_NEW_CONTAINER,
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "docker-restart",
        "the Docker daemon is stopped and started; nothing else",
        _restart_daemon,
        traits=DAEMON_RESTART,
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "docker-crash",
        "the daemon, containerd, shims and containers are SIGKILLed, then "
        "the daemon is started; nothing else",
        _crash_daemon,
        traits=DAEMON_RESTART,
        precondition=on_docker,
    ),
    Scenario(
        "docker-daemon-kill",
        "dockerd and containerd are SIGKILLed, the shims and containers left running (an OOM "
        "kill, systemctl kill); then the engine is started; nothing else",
        _kill_daemon,
        _start_engine,
        traits=DAEMON_RESTART,
        precondition=on_docker,
    ),
    Scenario(
        "sandbox-reschedule",
        "a sandbox container is removed and another stopped behind the gateway's back",
        _reschedule_sandboxes,
        _await_sandboxes_back,
        traits=Traits(
            gateway=GatewayFate.KEPT,
            sandboxes=SandboxFate.KEPT,
            some_sandboxes=frozenset({SandboxFate.RECREATED, SandboxFate.RESTARTED}),
            state=StateOutcome.SURVIVES,
            held_session=HeldSessionFate.ENDS,
            abilities=frozenset({Ability.SANDBOX_CONTAINERS}),
        ),
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "start-while-running",
        "gateway start on a running gateway (a no-op)",
        _start_while_running,
        _start,
        traits=dataclasses.replace(GATEWAY_ONLY, gateway=GatewayFate.KEPT),
        core=True,
        precondition=on_docker,
    ),
    Scenario(
        "long-downtime",
        "gateway stop, down until every sandbox token expired, then gateway start (tokens of "
        f"{SHORT_TOKEN_LIFETIME:.0f} s)",
        _stop_past_token_lifetime,
        _start,
        traits=dataclasses.replace(
            GATEWAY_ONLY, outlives_tokens=True, abilities=frozenset({Ability.TOKEN_LIFETIME})
        ),
        precondition=on_docker,
    ),
    Scenario(
        "auto-bootstrap",
        "host metadata deleted and the gateway stopped; sandbox create brings it back",
        _forget_host_metadata,
        _auto_bootstrap,
        traits=dataclasses.replace(
            GATEWAY_ONLY, abilities=frozenset({Ability.FORGET_HOST_FILES, Ability.AUTO_BOOTSTRAP})
        ),
        precondition=on_docker,
    ),
    Scenario(
        "resume-failure",
        "a resume is made to fail; the next gateway start resumes",
        _failing_resume,
        _start,
        traits=dataclasses.replace(
            _NEW_CONTAINER, failed_resume=True, abilities=frozenset({Ability.FAIL_RESUME})
        ),
        precondition=on_docker,
    ),
    Scenario(
        "recreate",
        "gateway start --recreate (negative control: state must NOT survive)",
        _nothing,
        _recreate,
        traits=dataclasses.replace(WIPED, abilities=frozenset({Ability.RECREATE})),
    ),
    Scenario(
        "destroy",
        "gateway destroy, then a fresh deploy (negative control)",
        _nothing,
        _destroy_and_deploy,
        traits=WIPED,
        core=True,
    ),
)


def select(available: Mapping[str, Scenario], selection: str) -> list[Scenario]:
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


def applicable(
    scenarios: Iterable[Scenario],
    *,
    applies: Applies | None = None,
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
) -> list[Scenario]:
    """The scenarios a check runs with: those whose traits ``applies`` accepts (every one when
    None), narrowed by key lists (the ``openshell_scenarios`` and ``openshell_exclude_scenarios``
    markers, for a project's own tests)."""
    return [
        scenario
        for scenario in scenarios
        if (applies is None or applies.matches(scenario.declared_traits))
        and (only is None or scenario.key in only)
        and scenario.key not in exclude
    ]


def refused(scenarios: Iterable[Scenario]) -> list[str]:
    """Every problem of every scenario (empty: all may be used)."""
    return [problem for scenario in scenarios for problem in scenario.problems()]


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


def _await_api(
    run: ScenarioRun,
    api_ready: Callable[[], bool],
    *,
    deadline: float,
    down_reason: Callable[[], str | None],
    poll: float,
    disrupted_at: float,
) -> None:
    """Wait until the API answers (``run.recovered_at``), at most ``deadline`` seconds from the
    end of the disruption; or say in ``run.gave_up`` why not."""
    down_since: float | None = None
    down_for_good: str | None = None

    def hopeless() -> str | None:
        # Down for good only once it has looked so for DOWN_GRACE seconds on end.
        nonlocal down_since, down_for_good
        reason = down_reason()
        now = time.monotonic()
        if reason is None:
            down_since = None
        elif down_since is None:
            down_since = now
        elif now - down_since >= DOWN_GRACE:
            down_for_good = reason
        return down_for_good

    try:
        poll_until(
            api_ready,
            bool,
            timeout=max(disrupted_at + deadline - time.monotonic(), 0.0),
            what=f"the API of gateway {run.gateway.name}",
            fail_fast=hopeless,
            schedule=(min(0.05, poll), 1.5, poll),
        )
    except ReadinessTimeout:
        run.gave_up = down_for_good or f"the gateway API did not answer within {deadline:.0f} s"
        return
    run.recovered_at = time.monotonic()
    log.info(
        "scenario %s: gateway answers %.1f s after the disruption",
        run.scenario.key,
        run.recovery_seconds,
    )


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
    if run.gave_up is None:
        _await_api(
            run,
            api_ready,
            deadline=deadline,
            down_reason=down_reason,
            poll=poll,
            disrupted_at=run.disrupted_at,
        )
    if run.artefacts is not None:
        run.artefacts.capture(f"after {scenario.key}")
