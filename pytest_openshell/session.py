"""Per-process state of the plugin: settings, run identity, engine, driver and scenarios.

One :class:`OpenShellSession` lives in each pytest process (the xdist controller and each worker),
stored in ``config.stash``. The run id is made by the controller (or the only process) and handed
to workers, so every object of one run carries the same label. The controller does the once-a-run
work: it holds the engine and the run lease, sweeps what dead runs left, builds images, and removes
the run's objects at the end (also after a failed setup or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openshell_core import runs
from openshell_core.engine import Engine, EngineMode, PrivateEngine, open_engine
from openshell_core.engine.discovery import NO_ENGINE
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, engines_dir
from openshell_core.errors import (
    EnginePrerequisiteError,
    NoEngineError,
    OpenShellError,
)
from openshell_core.host.api_client import GatewayClient, SshSession
from openshell_core.host.sshproxy.ssh_command import ensure_user_key
from openshell_core.images import ensure_images
from openshell_core.redaction import Redactor
from pytest_openshell.artefacts import Artefacts
from pytest_openshell.drivers import GatewayDriver, GatewayHandle, GatewaySpec
from pytest_openshell.engine_access import EngineAccess, lock_dir
from pytest_openshell.options import REFERENCE_TARGET, Settings
from pytest_openshell.scenarios import BUILTIN, Scenario, ScenarioRun, refused, select
from pytest_openshell.summary import RunSummary

log = logging.getLogger("openshell.plugin")

WORKER_INPUT_KEY = "openshell_run_id"


def worker_id(config: pytest.Config) -> str:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@dataclass
class OpenShellSession:
    """The plugin's state in one pytest process (the ``openshell`` fixture): settings, run id and
    lease, the engine and its readers-writer lock, the gateway driver and the scenarios, and what
    the run has seen (scenario runs, artefacts, failures). See the module docstring."""

    config: pytest.Config
    settings: Settings
    run_id: str
    summary: RunSummary = field(default_factory=RunSummary)
    #: masks the run's secrets in its artefacts and reports; learns them as the run meets them
    redactor: Redactor = field(default_factory=Redactor)
    _engine: Engine | None = None
    _access: EngineAccess | None = None
    _driver: GatewayDriver | None = None
    _scenarios: dict[str, Scenario] | None = None
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _names: int = 0
    _names_lock: threading.Lock = field(default_factory=threading.Lock)
    prepared: bool = False
    setup_error: str | None = None
    #: the last run of each scenario key in this process, and the artefacts collected for it
    runs: dict[str, ScenarioRun] = field(default_factory=dict)
    _artefacts: dict[str, list[Artefacts]] = field(default_factory=dict)
    #: names of the fixtures parametrised with scenario keys (to find a test's scenario)
    scenario_argnames: set[str] = field(default_factory=set)
    #: whether a test of this run failed (``--openshell-keep=failed`` keeps things up then),
    #: and the scenario keys of the failed tests
    failed: bool = False
    failed_scenarios: set[str] = field(default_factory=set)

    @property
    def worker(self) -> str:
        return worker_id(self.config)

    # -- engine --------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._open_engine()
        return self._engine

    def _open_engine(self) -> Engine:
        engine = self._connect_engine()
        self._exit.callback(engine.close)
        log.info("openshell: engine %s (%s)", engine.host, engine.source)
        return engine

    def _connect_engine(self) -> Engine:
        """The run's engine. A private engine is held by a lease: one this run started is stopped
        at the run's end unless another run still holds it; one that ran already keeps running."""
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
                self._exit.enter_context(private.lease())
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
            self._exit.enter_context(engine.private.lease())
        return engine

    @property
    def access(self) -> EngineAccess:
        if self._access is None:
            self._access = EngineAccess(lock_dir(self.engine))
        return self._access

    # -- driver and scenarios -----------------------------------------------------------------

    @property
    def driver(self) -> GatewayDriver:
        if self._driver is None:
            target = self.settings.target or REFERENCE_TARGET
            found = self.config.hook.pytest_openshell_gateway_driver(
                config=self.config, target=target, session=self
            )
            if found is None:
                raise pytest.UsageError(
                    f"--openshell-gateway={target}: no gateway driver answers to {target!r}; "
                    "use 'reference' or register a driver with the "
                    "pytest_openshell_gateway_driver hook"
                )
            self._driver = found
            if not isinstance(found, GatewayDriver):
                raise pytest.UsageError(
                    f"openshell: the driver for {target!r} ({type(found).__name__}) lacks "
                    "deploy/start/stop/destroy"
                )
        return self._driver

    @property
    def scenarios(self) -> dict[str, Scenario]:
        if self._scenarios is None:
            available = {scenario.key: scenario for scenario in BUILTIN}
            for contributed in self.config.hook.pytest_openshell_scenarios(config=self.config):
                for scenario in contributed or []:
                    if scenario.key in available:
                        raise pytest.UsageError(
                            f"openshell: scenario key {scenario.key!r} is registered twice"
                        )
                    available[scenario.key] = scenario
            problems = refused(available.values())
            if problems:
                raise pytest.UsageError("openshell: " + "\nopenshell: ".join(problems))
            self._scenarios = available
        return self._scenarios

    def engine_use(self, scenario: Scenario) -> contextlib.AbstractContextManager[float]:
        """Hold the engine as ``scenario`` needs it: alone when it disturbs every gateway on it
        (a daemon restart), else shared with the other workers and runs."""
        return self.access.exclusive() if scenario.exclusive else self.access.shared()

    def record_run(self, run: ScenarioRun) -> None:
        self.runs[run.scenario.key] = run

    def artefacts_of(self, key: str) -> list[Artefacts]:
        """The artefacts collected by runs of scenario ``key`` (written when a test of it fails)."""
        return self._artefacts.setdefault(key, [])

    def scenario_of(self, item: pytest.Item) -> str | None:
        """The scenario key ``item`` is parametrised with, if any."""
        params = getattr(getattr(item, "callspec", None), "params", {})
        for argname in self.scenario_argnames:
            if isinstance(params.get(argname), str):
                return str(params[argname])
        return None

    @property
    def run_dir(self) -> Path:
        """This run's host-side directory (0700), shared by the controller and its workers; the
        controller removes it at the end of the run (kept with what ``--openshell-keep`` kept:
        it holds the mTLS files that reach a kept gateway)."""
        return runs.make_run_dir(self.run_id)

    def note_kept(self, gateway: GatewayHandle) -> None:
        """Say how to reach a gateway left up by ``--openshell-keep`` (printed at the end)."""
        lines = [
            f"gateway {gateway.name} at {gateway.endpoint}: reach it with",
            f"  export DOCKER_HOST={self.engine.host} XDG_CONFIG_HOME={gateway.config_home}",
            f"  pytest-openshell gateway status --name {gateway.name}",
            f"  pytest-openshell sandbox list --gateway {gateway.name}",
            f"  pytest-openshell gateway destroy --name {gateway.name}   # when done",
        ]
        with (self.run_dir / "kept.txt").open("a") as kept:
            kept.write("\n".join(lines) + "\n")

    def kept_lines(self) -> list[str]:
        try:
            return (runs.run_dir(self.run_id) / "kept.txt").read_text().splitlines()
        except FileNotFoundError:
            return []

    def keeps(self) -> bool:
        """Whether the run's gateways stay up at the end (``--openshell-keep``)."""
        return self.settings.keep == "always" or (self.settings.keep == "failed" and self.failed)

    def selected_scenarios(self) -> list[Scenario]:
        try:
            return select(self.scenarios, self.settings.scenarios)
        except KeyError as exc:
            raise pytest.UsageError(f"--openshell-scenarios: {exc.args[0]}") from None

    def client(self, gateway: GatewayHandle) -> GatewayClient:
        """A gRPC client of ``gateway`` through its host-side files (close it after use)."""
        return _LearningClient.for_gateway(gateway.name, env=gateway.env, redactor=self.redactor)

    def user_key(self) -> Path:
        """The run's SSH key (made once with ssh-keygen): sandboxes of the run accept it."""
        key = self.config_home.parent / "ssh" / "id_ed25519"
        with self._names_lock:
            made = ensure_user_key(key, comment=f"pytest-openshell-run-{self.run_id}")
        self.redactor.learn(made.read_text())
        return made

    def user_public_key(self) -> str:
        return self.user_key().with_suffix(".pub").read_text().strip()

    def driver_ready(self, gateway: GatewayHandle) -> bool:
        """True when the gateway's API reports healthy."""
        try:
            with GatewayClient.for_gateway(gateway.name, env=gateway.env, timeout=3) as client:
                client.health()
        except OpenShellError:
            return False
        return True

    # -- names ---------------------------------------------------------------------------------

    @property
    def config_home(self) -> Path:
        """The host-side config dir of this run's gateways (never the user's own ~/.config)."""
        path = self.run_dir / "config"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def gateway_spec(self, label: str = "gw", **overrides: Any) -> GatewaySpec:
        """A spec with a name and port no other worker or run uses."""
        with self._names_lock:
            self._names += 1
            number = self._names
        worker = self.worker.replace("gw", "w")
        name = f"os{self.run_id[:8]}-{worker}-{label}{number}"
        values: dict[str, Any] = {
            "name": name,
            "port": free_port(),
            "image": self.settings.images.gateway,
            "upgrade_image": self.settings.images.gateway_upgrade,
            "sandbox_image": self.settings.images.sandbox,
            "run_id": self.run_id,
            "faults": self.settings.faults,
            "health_timeout": self.settings.health_timeout,
            "api_timeout": self.settings.api_timeout,
        }
        values.update(overrides)
        return GatewaySpec(**values)

    # -- once a run (controller) ---------------------------------------------------------------

    def prepare(self) -> None:
        """Controller: run lease, sweep of dead runs, images. Records a setup error, never raises
        (every test then fails with it)."""
        if self.prepared:
            return
        self.prepared = True
        try:
            directory = runs.runs_dir()
            self._exit.enter_context(runs.RunLease(self.run_id, directory).held())
            self._exit.callback(self._remove_run_dir)  # after the objects, before the lease
            engine = self.engine
            # Registered after the engine, so it runs before the engine is closed (and stopped,
            # when this run started it); not at all when no engine could be had.
            self._exit.callback(self._remove_run_objects)
            runs.sweep_dead_runs(engine, directory, current=self.run_id)
            if (
                self.settings.build
                and (self.settings.target or REFERENCE_TARGET) == REFERENCE_TARGET
            ):
                ensure_images(self.engine, self.settings.images)
        except OpenShellError as exc:
            self.setup_error = str(exc)

    def _remove_run_objects(self) -> None:
        if self.keeps() or self._engine is None:
            return  # kept; or no engine was ever reached, so this run made nothing
        try:
            report = runs.remove_run_objects(self.engine, {self.run_id})
        except OpenShellError as exc:
            log.warning("openshell: could not remove this run's objects: %s", exc)
            return
        if report.total:
            log.info("openshell: removed %d objects of run %s", report.total, self.run_id)

    def _remove_run_dir(self) -> None:
        if not self.keeps():
            runs.remove_run_dir(self.run_id)

    def close(self) -> None:
        self._exit.close()


class _LearningClient(GatewayClient):
    """A gateway client that tells the run's redactor every session token it is given."""

    def __init__(self, endpoint: str, *, redactor: Redactor, **options: Any) -> None:
        super().__init__(endpoint, **options)
        self._redactor = redactor

    def create_ssh_session(self, name: str) -> SshSession:
        session = super().create_ssh_session(name)
        self._redactor.learn(session.token)
        return session


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
