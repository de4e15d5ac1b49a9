"""The ``pytest11`` entry point of pytest-openshell.

Inert unless ``--openshell-gateway`` (or its ini key / environment variable) is given: the options
and fixtures exist, and every test that uses an ``openshell_*`` fixture skips with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from openshell_core.engine import Engine
from openshell_core.runs import new_run_id
from pytest_openshell import hookspecs
from pytest_openshell.artefacts import ARTEFACTS_KEY
from pytest_openshell.drivers import GatewayDriver, GatewayHandle, ReferenceDriver
from pytest_openshell.fixtures import (
    GatewayFactory,
    SandboxFactory,
    ScenarioFixture,
    SshHelper,
)
from pytest_openshell.options import REFERENCE_TARGET, add_options, resolve
from pytest_openshell.session import WORKER_INPUT_KEY, OpenShellSession, is_worker
from pytest_openshell.summary import PROPERTY, SCENARIO
from pytest_openshell.survival import SurvivalRecord

SESSION_KEY = pytest.StashKey[OpenShellSession]()
DISABLED = (
    "pytest-openshell is off: pass --openshell-gateway (or set PYTEST_OPENSHELL_GATEWAY) "
    "to run this test"
)

MARKERS = (
    "openshell_scenarios(*keys): run this test only with these lifecycle scenarios",
    "openshell_exclude_scenarios(*keys): never run this test with these scenarios",
    "openshell_property(number): the CONFORMANCE.md property this test checks (run summary)",
)


# -- configuration ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    settings = resolve(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput and WORKER_INPUT_KEY in workerinput:
        run_id = str(workerinput[WORKER_INPUT_KEY])
    else:
        run_id = new_run_id()
    config.stash[SESSION_KEY] = OpenShellSession(config, settings, run_id)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "openshell-xdist")


class _XdistHooks:
    """Registered only when pytest-xdist is active (its hooks exist only then)."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_INPUT_KEY] = node.config.stash[SESSION_KEY].run_id


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash[SESSION_KEY]
    if state.settings.enabled and not is_worker(session.config):
        state.prepare()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is not None:
        state.close()


@pytest.hookimpl(trylast=True)
def pytest_openshell_gateway_driver(config: pytest.Config, target: str) -> GatewayDriver | None:
    """The built-in driver: the embedded reference gateway."""
    if target != REFERENCE_TARGET:
        return None
    state = config.stash[SESSION_KEY]
    return ReferenceDriver(state.engine, state.config_home)


# -- scenario parametrisation --------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "openshell_scenario" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[SESSION_KEY]
    keys = [scenario.key for scenario in state.selected_scenarios()]
    wanted = metafunc.definition.get_closest_marker("openshell_scenarios")
    if wanted is not None:
        keys = [key for key in keys if key in wanted.args]
    excluded = metafunc.definition.get_closest_marker("openshell_exclude_scenarios")
    if excluded is not None:
        keys = [key for key in keys if key not in excluded.args]
    if not keys:
        reason = "no selected scenario applies to this test (see --openshell-scenarios)"
        metafunc.parametrize(
            "openshell_scenario",
            [pytest.param(None, marks=pytest.mark.skip(reason=reason))],
            indirect=True,
            ids=["no-scenario"],
        )
        return
    metafunc.parametrize("openshell_scenario", keys, indirect=True, ids=keys)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openshell(request: pytest.FixtureRequest) -> OpenShellSession:
    """The plugin's state for this process: settings, run id, engine, driver, scenarios."""
    state = request.config.stash[SESSION_KEY]
    if not state.settings.enabled:
        pytest.skip(DISABLED)
    if is_worker(request.config):
        state.prepared = True
    if state.setup_error:
        pytest.fail(
            f"openshell: the run could not be prepared:\n{state.setup_error}", pytrace=False
        )
    return state


@pytest.fixture(scope="session")
def openshell_engine(openshell: OpenShellSession) -> Engine:
    """The Docker engine the run uses (shared by all workers)."""
    return openshell.engine


@pytest.fixture(scope="session")
def openshell_gateway_factory(openshell: OpenShellSession) -> Iterator[GatewayFactory]:
    """Deploys gateways with names and ports of their own; destroys them at the end."""
    factory = GatewayFactory(openshell)
    yield factory
    factory.destroy_all()


@pytest.fixture(scope="session")
def openshell_gateway(openshell_gateway_factory: GatewayFactory) -> GatewayHandle:
    """A deployed gateway shared by the tests of this worker that do not disrupt it."""
    return openshell_gateway_factory.deploy(label="shared")


@pytest.fixture
def openshell_sandbox_factory(
    openshell: OpenShellSession, request: pytest.FixtureRequest
) -> Iterator[SandboxFactory]:
    """Creates sandboxes on a gateway (``create(gateway, ...)``); deletes them after the test."""
    factory = SandboxFactory(openshell)
    yield factory
    factory.delete_all()


@pytest.fixture
def openshell_ssh(openshell: OpenShellSession) -> Iterator[SshHelper]:
    """Runs commands in sandboxes over real SSH through the gateway, and holds sessions open."""
    helper = SshHelper(openshell)
    yield helper
    helper.close()


@pytest.fixture
def openshell_record(openshell: OpenShellSession) -> SurvivalRecord:
    """What must survive: ``track(name, probe)`` before a scenario, ``verify(...)`` after."""
    return SurvivalRecord()


@pytest.fixture
def openshell_scenario(
    openshell: OpenShellSession, request: pytest.FixtureRequest
) -> Iterator[ScenarioFixture]:
    """One lifecycle scenario (parametrised over the selected keys): ``run(gateway)`` disrupts
    and recovers a gateway and measures the recovery."""
    key = request.param
    scenario = openshell.scenarios[key]
    missing = scenario.missing_capabilities(openshell.engine, openshell.driver)
    if missing:
        pytest.skip("; ".join(missing))
    request.node.user_properties.append((SCENARIO, key))
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            openshell.access.exclusive() if scenario.exclusive else openshell.access.shared()
        )
        fixture = ScenarioFixture(openshell, scenario, request.node)
        yield fixture
        fixture.report()


# -- reporting ----------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("openshell_property")
        if marker is not None and marker.args:
            item.user_properties.append((PROPERTY, int(marker.args[0])))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash[SESSION_KEY]
    collected = item.stash.get(ARTEFACTS_KEY, [])
    if report.failed and collected:
        for artefacts in collected:
            written = None
            with contextlib.suppress(OSError):
                written = artefacts.write(state.settings.artifacts, item.nodeid)
            report.sections.append(
                (f"openshell artefacts ({report.when})", artefacts.summary(written))
            )
    return report


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is None or is_worker(config):
        return
    reports: list[pytest.TestReport] = []
    for key in ("passed", "failed", "skipped", "error"):
        reports.extend(
            r for r in terminalreporter.stats.get(key, []) if isinstance(r, pytest.TestReport)
        )
    for report in reports:
        state.summary.add(report)
    if state.summary.empty:
        return
    terminalreporter.section("openshell: scenario x property")
    for line in state.summary.table():
        terminalreporter.write_line(line)
    with contextlib.suppress(OSError):
        path = state.summary.write_json(state.settings.artifacts)
        terminalreporter.write_line(f"summary written to {path}")
