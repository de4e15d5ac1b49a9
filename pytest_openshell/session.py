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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openshell_core import runs
from openshell_core.engine import Engine
from openshell_core.errors import OpenShellError
from openshell_core.host.api_client import GatewayClient
from openshell_core.images import ensure_images
from openshell_core.redaction import Redactor
from pytest_openshell.drivers import GatewayDriver, GatewayHandle, GatewaySpec
from pytest_openshell.engine_access import EngineAccess
from pytest_openshell.options import REFERENCE_TARGET, GatewayOptions, Settings
from pytest_openshell.scenarios import Scenario
from pytest_openshell.session_parts import (
    ArtefactStore,
    EngineUse,
    Gateways,
    RunRecords,
    ScenarioCatalogue,
    free_port,
)
from pytest_openshell.summary import RunSummary

__all__ = ["OpenShellSession", "free_port", "is_worker", "worker_id"]

log = logging.getLogger("openshell.plugin")

WORKER_INPUT_KEY = "openshell_run_id"


def worker_id(config: pytest.Config) -> str:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@dataclass
class OpenShellSession:
    """The plugin's state in one pytest process (the ``openshell`` fixture): settings and run id,
    and the parts of :mod:`pytest_openshell.session_parts` it delegates to: :attr:`engine_part`
    (engine, lease, lock), :attr:`gateways` (driver, specs, clients), :attr:`catalogue`
    (scenarios), :attr:`artefacts` (shared failure artefacts), :attr:`records` (what the run has
    seen). See the module docstring."""

    config: pytest.Config
    settings: Settings
    run_id: str
    #: masks the run's secrets in its artefacts and reports; learns them as the run meets them
    redactor: Redactor = field(default_factory=Redactor)
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    prepared: bool = False
    setup_error: str | None = None
    engine_part: EngineUse = field(init=False)
    gateways: Gateways = field(init=False)
    catalogue: ScenarioCatalogue = field(init=False)
    artefacts: ArtefactStore = field(init=False)
    records: RunRecords = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.engine_part = EngineUse(self.settings, self._exit)
        self.gateways = Gateways(
            self.settings,
            self.run_id,
            worker_id(config),
            self.redactor,
            find_driver=lambda target: config.hook.pytest_openshell_gateway_driver(
                config=config, target=target, session=self
            ),
        )
        self.catalogue = ScenarioCatalogue(
            self.settings, lambda: config.hook.pytest_openshell_scenarios(config=config)
        )
        self.artefacts = ArtefactStore()
        self.records = RunRecords(self.settings, self.run_id)

    # -- the public face: what fixtures, conformance and downstream tests use ------------------

    @property
    def worker(self) -> str:
        return self.gateways.worker

    @property
    def engine(self) -> Engine:
        return self.engine_part.engine

    @property
    def access(self) -> EngineAccess:
        return self.engine_part.access

    def engine_use(self, scenario: Scenario) -> contextlib.AbstractContextManager[float]:
        """Hold the engine as ``scenario`` needs it (alone for a daemon scenario)."""
        return self.engine_part.use(scenario)

    @property
    def driver(self) -> GatewayDriver:
        return self.gateways.driver

    @property
    def scenarios(self) -> dict[str, Scenario]:
        return self.catalogue.known

    def selected_scenarios(self) -> list[Scenario]:
        return self.catalogue.selected()

    @property
    def summary(self) -> RunSummary:
        return self.records.summary

    @property
    def failed_scenarios(self) -> set[str]:
        return self.records.failed_scenarios

    @property
    def config_home(self) -> Path:
        return self.gateways.config_home

    @property
    def run_dir(self) -> Path:
        """This run's host-side directory (0700), shared by the controller and its workers; the
        controller removes it at the end of the run (kept with what ``--openshell-keep`` kept:
        it holds the mTLS files that reach a kept gateway)."""
        return runs.make_run_dir(self.run_id)

    def gateway_spec(
        self, label: str = "gw", options: GatewayOptions | None = None, transport: str | None = None
    ) -> GatewaySpec:
        return self.gateways.spec(label, options, transport)

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports of the run (``--openshell-transport``): each scenario runs once per
        transport."""
        return self.settings.transports

    def scenario_id(self, key: str, transport: str | None = None) -> str:
        """The run's name for scenario ``key`` on ``transport``: the key when the run has one
        transport, else ``key-transport`` (test ids, artefacts, histories, summary rows)."""
        return self.settings.scenario_id(key, transport)

    def client(self, gateway: GatewayHandle) -> GatewayClient:
        return self.gateways.client(gateway)

    def driver_ready(self, gateway: GatewayHandle) -> bool:
        return self.gateways.ready(gateway)

    def user_key(self) -> Path:
        return self.gateways.user_key()

    def user_public_key(self) -> str:
        return self.user_key().with_suffix(".pub").read_text().strip()

    def keeps(self) -> bool:
        return self.records.keeps()

    def note_kept(self, gateway: GatewayHandle) -> None:
        self.records.note_kept(gateway, self.engine.host)

    def at_exit(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when this process's plugin state closes (a driver's clean-up)."""
        self._exit.callback(callback)

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
                ensure_images(engine, self.settings.images)
        except OpenShellError as exc:
            self.setup_error = str(exc)

    def _remove_run_objects(self) -> None:
        if self.keeps() or not self.engine_part.opened:
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
