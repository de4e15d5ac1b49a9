"""The parts of a run's state in one pytest process, one job each; :class:`OpenShellSession`
(:mod:`pytest_openshell.session`) composes them.

- :class:`EngineUse`: the run's engine, the lease that keeps a private engine up, and the
  readers-writer lock that lets a daemon scenario have the engine to itself.
- :class:`Gateways`: the gateway driver, the specs of the gateways the run deploys (names and ports
  no other worker or run uses), and what reaches them (API clients, the run's SSH key).
- :class:`ScenarioCatalogue`: the scenarios known to the run (built in and contributed) and the
  ones selected.
- :class:`ArtefactStore`: failure artefacts of scenario runs shared by several tests, kept until
  their scenario is done. A test's own artefacts live in its ``item.stash`` (``ARTEFACTS_KEY``).
- :class:`RunRecords`: what the run has seen: the last run of each scenario, failures, gateways
  kept up, the summary table.

Per-test data (a test's scenario key, its artefacts, whether it failed) is kept in ``item.stash``
under the typed keys at the end of this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openshell_core import runs
from openshell_core.engine import Engine, EngineMode, PrivateEngine, open_engine
from openshell_core.engine.discovery import NO_ENGINE
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, engines_dir
from openshell_core.errors import EnginePrerequisiteError, NoEngineError, OpenShellError
from openshell_core.host.api_client import GatewayClient, SshSession
from openshell_core.host.sshproxy.ssh_command import ensure_user_key
from openshell_core.redaction import Redactor
from pytest_openshell.artefacts import Artefacts
from pytest_openshell.drivers import GatewayDriver, GatewayHandle, GatewaySpec, check_transports
from pytest_openshell.engine_access import EngineAccess, lock_dir
from pytest_openshell.options import REFERENCE_TARGET, GatewayOptions, Settings
from pytest_openshell.scenarios import BUILTIN, Scenario, ScenarioRun, refused, select
from pytest_openshell.summary import RunSummary
from pytest_openshell.transports import ScenarioKey

log = logging.getLogger("openshell.plugin")


# -- engine use -----------------------------------------------------------------------------------


@dataclass
class EngineUse:
    """The run's engine, opened on first use and closed (lease released) by ``exit``."""

    settings: Settings
    exit: contextlib.ExitStack
    _engine: Engine | None = None
    _access: EngineAccess | None = None

    @property
    def opened(self) -> bool:
        """Whether the engine was reached (when not, the run made nothing on it)."""
        return self._engine is not None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = self._connect()
            self.exit.callback(engine.close)
            log.info("openshell: engine %s (%s)", engine.host, engine.source)
            self._engine = engine
        return self._engine

    def _connect(self) -> Engine:
        """A private engine is held by a lease: one this run started is stopped at the run's end
        unless another run still holds it; one that ran already keeps running."""
        mode = self.settings.engine
        private = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir() / DEFAULT_ENGINE_NAME)
        if mode is EngineMode.AUTO and not os.environ.get("DOCKER_HOST"):
            # A named engine (DOCKER_HOST) is that engine or an error; otherwise a running private
            # engine is preferred, then one that answers, then the private engine, started.
            if private.is_running():
                mode = EngineMode.PRIVATE
            else:
                try:
                    return self._held(open_engine(EngineMode.HOST))
                except NoEngineError:
                    mode = EngineMode.PRIVATE
        if mode is EngineMode.PRIVATE:
            try:
                self.exit.enter_context(private.lease())
            except EnginePrerequisiteError as exc:
                if self.settings.engine is EngineMode.PRIVATE:
                    raise
                raise NoEngineError(
                    NO_ENGINE + "; a private engine cannot start here: " + "; ".join(exc.missing)
                ) from exc
            return private.connect()
        return self._held(open_engine(mode))

    def _held(self, engine: Engine) -> Engine:
        if engine.private is not None:
            self.exit.enter_context(engine.private.lease())
        return engine

    @property
    def access(self) -> EngineAccess:
        if self._access is None:
            self._access = EngineAccess(lock_dir(self.engine))
        return self._access

    def use(self, scenario: Scenario) -> contextlib.AbstractContextManager[float]:
        """Hold the engine as ``scenario`` needs it: alone when it disturbs every gateway on it
        (a daemon restart), else shared with the other workers and runs."""
        return self.access.exclusive() if scenario.exclusive else self.access.shared()


# -- drivers and gateways -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateways:
    """The gateway driver and what the run's gateways are made with and reached by."""

    settings: Settings
    run_id: str
    worker: str
    redactor: Redactor
    #: asks the ``pytest_openshell_gateway_driver`` hook for the driver of a target
    find_driver: Callable[[str], object]
    _driver: GatewayDriver | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def driver(self) -> GatewayDriver:
        if self._driver is None:
            target = self.settings.target or REFERENCE_TARGET
            found = self.find_driver(target)
            if found is None:
                raise pytest.UsageError(
                    f"--openshell-gateway={target}: no gateway driver answers to {target!r}; "
                    "use 'reference', 'kubernetes' or register a driver with the "
                    "pytest_openshell_gateway_driver hook"
                )
            if not isinstance(found, GatewayDriver):
                raise pytest.UsageError(
                    f"openshell: the driver for {target!r} ({type(found).__name__}) lacks "
                    "deploy/start/stop/destroy"
                )
            problem = check_transports(found, self.settings.transports)
            if problem is not None:
                # Every test that needs the driver fails with the reason, as after a failed setup.
                pytest.fail(f"openshell: {problem}", pytrace=False)
            self._driver = found
        return self._driver

    @property
    def config_home(self) -> Path:
        """The host-side config dir of this run's gateways (never the user's own ~/.config)."""
        path = runs.make_run_dir(self.run_id) / "config"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spec(
        self, label: str = "gw", options: GatewayOptions | None = None, transport: str | None = None
    ) -> GatewaySpec:
        """A spec with a name and port no other worker or run uses, deployed with ``options``
        (default: the run's, from its settings), on ``transport`` when named."""
        if options is None:
            options = self.settings.options_for(transport or self.settings.transports[0])
        elif transport is not None:
            options = dataclasses.replace(options, transport=transport)
        with self._lock:
            number = next(self._numbers)
        worker = self.worker.replace("gw", "w")
        return GatewaySpec(
            name=f"os{self.run_id[:8]}-{worker}-{label}{number}",
            port=free_port(),
            run_id=self.run_id,
            options=options,
        )

    def client(self, gateway: GatewayHandle) -> GatewayClient:
        """A gRPC client of ``gateway`` through its host-side files (close it after use)."""
        return _LearningClient.for_gateway(gateway.name, env=gateway.env, redactor=self.redactor)

    def ready(self, gateway: GatewayHandle) -> bool:
        """True when the gateway's API reports healthy."""
        try:
            with GatewayClient.for_gateway(gateway.name, env=gateway.env, timeout=3) as client:
                client.health()
        except OpenShellError:
            return False
        return True

    def user_key(self) -> Path:
        """The run's SSH key (made once with ssh-keygen): sandboxes of the run accept it."""
        key = self.config_home.parent / "ssh" / "id_ed25519"
        key.parent.mkdir(mode=0o700, exist_ok=True)
        # The workers of a run share the key: one makes it while the others wait (a second
        # ssh-keygen would find the first one's file half made and fail).
        with self._lock, (key.parent / "key.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            made = ensure_user_key(key, comment=f"pytest-openshell-run-{self.run_id}")
        self.redactor.learn(made.read_text())
        return made


class _LearningClient(GatewayClient):
    """A gateway client that tells the run's redactor every session token it is given."""

    def __init__(self, endpoint: str, *, redactor: Redactor, **options: Any) -> None:
        super().__init__(endpoint, **options)
        self._redactor = redactor

    def create_ssh_session(self, name: str) -> SshSession:
        session = super().create_ssh_session(name)
        self._redactor.learn(session.token)
        return session


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class ScenarioCatalogue:
    """The scenarios the run knows (built in, then each ``pytest_openshell_scenarios`` answer),
    checked once, and the ones ``--openshell-scenarios`` selects."""

    settings: Settings
    #: asks the ``pytest_openshell_scenarios`` hook: a list of answers, each a list or None
    contributed: Callable[[], list[list[Scenario] | None]]
    #: names of the fixtures parametrised with scenario keys
    argnames: set[str] = field(default_factory=set)
    _known: dict[str, Scenario] | None = None

    @property
    def known(self) -> dict[str, Scenario]:
        if self._known is None:
            available = {scenario.key: scenario for scenario in BUILTIN}
            for answer in self.contributed():
                for scenario in answer or []:
                    if scenario.key in available:
                        raise pytest.UsageError(
                            f"openshell: scenario key {scenario.key!r} is registered twice"
                        )
                    available[scenario.key] = scenario
            problems = refused(available.values())
            if problems:
                raise pytest.UsageError("openshell: " + "\nopenshell: ".join(problems))
            self._known = available
        return self._known

    def selected(self) -> list[Scenario]:
        try:
            return select(self.known, self.settings.scenarios)
        except KeyError as exc:
            raise pytest.UsageError(f"--openshell-scenarios: {exc.args[0]}") from None

    def param_of(self, item: pytest.Item) -> ScenarioParam | None:
        """The scenario ``item`` is parametrised with, if any (read once, at collection, into
        ``item.stash[SCENARIO_KEY]``)."""
        params = getattr(getattr(item, "callspec", None), "params", {})
        for argname in sorted(self.argnames):
            value = params.get(argname)
            if isinstance(value, ScenarioKey):
                return ScenarioParam(argname, value.key, value.transport, value.id)
            if isinstance(value, str):  # parametrised by hand with a plain key
                transport = self.settings.transports[0]
                return ScenarioParam(
                    argname, value, transport, self.settings.scenario_id(value, transport)
                )
        return None


# -- artefacts ------------------------------------------------------------------------------------


@dataclass
class ArtefactStore:
    """Artefacts of scenario runs that several tests share (a session-scoped scenario fixture,
    as in the conformance suite), by scenario id (the key, and its transport when the run has
    several; ``Settings.scenario_id``): every failing test of that scenario run reports them.
    Dropped when the scenario run is done (the plugin calls :meth:`done` once the next test has
    another), so they neither pile up nor reach a later run's tests."""

    _by_scenario: dict[str, list[Artefacts]] = field(default_factory=dict)

    def of(self, key: str) -> list[Artefacts]:
        """The list runs of scenario ``key`` add their artefacts to."""
        return self._by_scenario.setdefault(key, [])

    def get(self, key: str) -> list[Artefacts]:
        """The artefacts collected for scenario ``key`` so far (none once it is done)."""
        return list(self._by_scenario.get(key, ()))

    def done(self, key: str) -> None:
        """Scenario ``key`` is over: its tests have reported; drop its artefacts."""
        self._by_scenario.pop(key, None)

    @property
    def pending(self) -> list[str]:
        """Scenario keys with artefacts kept."""
        return sorted(self._by_scenario)


# -- run records ----------------------------------------------------------------------------------


@dataclass
class RunRecords:
    """What the run has seen: the last run of each scenario, failures, kept gateways, and the
    scenario x property summary."""

    settings: Settings
    run_id: str
    summary: RunSummary = field(init=False)
    #: the last run of each scenario in this process, by its id (``Settings.scenario_id``: one
    #: per transport); its timings go into the reports
    runs: dict[str, ScenarioRun] = field(default_factory=dict)
    #: whether a test of this run failed (``--openshell-keep=failed`` keeps things up then)
    failed: bool = False
    #: the scenario ids (``Settings.scenario_id``) of the failed tests
    failed_scenarios: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.summary = RunSummary(self.settings.transports)

    def record_run(self, run: ScenarioRun) -> None:
        self.runs[self.id_of(run)] = run

    def id_of(self, run: ScenarioRun) -> str:
        """The id of ``run``'s scenario on the transport of its gateway."""
        return self.settings.scenario_id(run.scenario.key, run.gateway.spec.options.transport)

    def record_failure(self, key: str | None) -> None:
        self.failed = True
        if key is not None:
            self.failed_scenarios.add(key)

    def keeps(self) -> bool:
        """Whether the run's gateways stay up at the end (``--openshell-keep``)."""
        return self.settings.keep == "always" or (self.settings.keep == "failed" and self.failed)

    def note_kept(self, gateway: GatewayHandle, engine_host: str) -> None:
        """Say how to reach a gateway left up by ``--openshell-keep`` (printed at the end). The
        note goes to the run directory, shared by the controller and its workers."""
        lines = [
            f"gateway {gateway.name} at {gateway.endpoint}: reach it with",
            f"  export DOCKER_HOST={engine_host} XDG_CONFIG_HOME={gateway.config_home}",
            f"  pytest-openshell gateway status --name {gateway.name}",
            f"  pytest-openshell sandbox list --gateway {gateway.name}",
            f"  pytest-openshell gateway destroy --name {gateway.name}   # when done",
        ]
        with (runs.make_run_dir(self.run_id) / "kept.txt").open("a") as kept:
            kept.write("\n".join(lines) + "\n")

    def kept_lines(self) -> list[str]:
        try:
            return (runs.run_dir(self.run_id) / "kept.txt").read_text().splitlines()
        except FileNotFoundError:
            return []


# -- per-test data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioParam:
    """A test's scenario: the fixture parametrised with it, its key and transport. Tests sharing
    all three share one run of a fixture of wider scope (and its artefacts)."""

    argname: str
    key: str
    transport: str
    #: the run's name for this scenario on this transport (``Settings.scenario_id``)
    id: str


#: The scenario a test is parametrised with (set at collection; absent: none).
SCENARIO_KEY = pytest.StashKey[ScenarioParam]()
#: Whether a test failed (a fixture keeps its gateway up under ``--openshell-keep``).
FAILED_KEY = pytest.StashKey[bool]()
