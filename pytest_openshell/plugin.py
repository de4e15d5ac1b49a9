"""The ``pytest11`` entry point of pytest-openshell.

Inert unless ``--openshell-gateway`` (or its ini key / environment variable) is given: the options
and fixtures exist, and every test that uses an ``openshell_*`` fixture skips with the reason.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from openshell_core.engine import Engine
from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import poll_until
from openshell_core.runs import new_run_id
from pytest_openshell import hookspecs
from pytest_openshell.artefacts import ARTEFACTS_KEY
from pytest_openshell.drivers import Ability, GatewayDriver, GatewayHandle, ReferenceDriver
from pytest_openshell.fixtures import (
    GatewayFactory,
    SandboxFactory,
    ScenarioFixture,
    SshHelper,
)
from pytest_openshell.options import KUBE_TARGET, REFERENCE_TARGET, add_options, resolve
from pytest_openshell.scenarios import Applies, Scenario, applicable, on_docker
from pytest_openshell.session import WORKER_INPUT_KEY, OpenShellSession, is_worker
from pytest_openshell.session_parts import FAILED_KEY, SCENARIO_KEY
from pytest_openshell.summary import DOWNTIME, PROPERTY, RECOVERY, SCENARIO, TRANSPORT
from pytest_openshell.survival import SurvivalRecord
from pytest_openshell.transports import ScenarioKey

SESSION_KEY = pytest.StashKey[OpenShellSession]()
DISABLED = (
    "pytest-openshell is off: pass --openshell-gateway (or set PYTEST_OPENSHELL_GATEWAY) "
    "to run this test"
)

MARKERS = (
    "openshell_traits(applies | **traits): run this test with every selected scenario whose "
    "traits match (pytest_openshell.Applies; see docs/conformance.md)",
    "openshell_abilities(*abilities): skip, with the reason, when the gateway driver lacks one of "
    "these abilities (pytest_openshell.Ability)",
    "openshell_docker: the test reads Docker objects (containers, volumes, networks, the "
    "daemon): skip, with the reason, when the gateway does not run on Docker",
    "openshell_scenarios(*keys): run this test only with these lifecycle scenarios",
    "openshell_exclude_scenarios(*keys): never run this test with these scenarios",
    "openshell_property(number=N): the property of docs/conformance.md this test checks (run "
    "summary; select with -m 'openshell_property(number=N)')",
    "openshell_no_scenario: none of the selected scenarios applies (deselected)",
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
    if settings.target not in (None, REFERENCE_TARGET) and Path(str(settings.target)).exists():
        # `pytest --openshell-gateway conformance` takes the path for the target: say so now,
        # before pytest collects the default test paths instead.
        raise pytest.UsageError(
            f"--openshell-gateway took {settings.target!r}, a path, for its target: put paths "
            "before it, or write --openshell-gateway=reference"
        )
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
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """``--dist loadgroup`` keeps each scenario's tests on one worker (see
        :mod:`pytest_openshell.xdist_scheduling` for why xdist's own does not, here)."""
        if config.getvalue("dist") != "loadgroup":
            return None
        from pytest_openshell.xdist_scheduling import ScenarioGroupScheduling  # noqa: PLC0415

        state = config.stash[SESSION_KEY]
        ids = [state.scenario_id(key, t) for t in state.transports for key in state.scenarios]
        return ScenarioGroupScheduling(config, log, ids)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Prepare the run (engine, sweep, images) once tests are about to run: never for a listing
    (``--collect-only``, what an IDE runs again and again), and not when none of the collected
    tests uses the plugin. Under xdist the controller collects nothing and prepares anyway."""
    state = session.config.stash[SESSION_KEY]
    if not state.settings.enabled or is_worker(session.config) or session.config.option.collectonly:
        return
    if session.items and not any(_uses_openshell(item) for item in session.items):
        return
    state.prepare()


def _uses_openshell(item: pytest.Item) -> bool:
    return "openshell" in getattr(item, "fixturenames", ())


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is not None:
        state.close()


@pytest.hookimpl(trylast=True)
def pytest_openshell_gateway_driver(target: str, session: OpenShellSession) -> GatewayDriver | None:
    """The built-in driver: the embedded reference gateway."""
    if target == KUBE_TARGET:
        return _kube_driver(session)
    if target != REFERENCE_TARGET:
        return None
    return ReferenceDriver(session.engine, session.config_home)


def _kube_driver(session: OpenShellSession) -> GatewayDriver:
    from openshell_core.errors import OpenShellError  # noqa: PLC0415
    from pytest_openshell.kube_driver import make_driver  # noqa: PLC0415

    settings = session.settings
    try:
        driver = make_driver(
            context=settings.kube_context,
            namespace=settings.kube_namespace,
            endpoint=settings.kube_endpoint,
            config_home=session.config_home,
            run_id=session.run_id,
            worker=session.worker,
        )
    except OpenShellError as exc:
        raise pytest.UsageError(f"--openshell-gateway=kubernetes: {exc}") from None
    session.at_exit(lambda: driver.close(keep=session.keeps()))
    return driver


@pytest.hookimpl(trylast=True)
def pytest_openshell_scenarios(config: pytest.Config) -> list[Scenario] | None:
    """The kubernetes target's own scenarios, when it is the target."""
    state = config.stash.get(SESSION_KEY, None)
    if state is None or state.settings.target != KUBE_TARGET:
        return None
    from pytest_openshell.kube_driver import SCENARIOS  # noqa: PLC0415

    return list(SCENARIOS)


# -- scenario parametrisation --------------------------------------------------------------------


def parametrize_scenarios(
    metafunc: pytest.Metafunc, argname: str = "openshell_scenario", *, scope: str = "function"
) -> None:
    """Parametrise fixture ``argname`` with the scenario keys that apply to this test: the ones
    selected by ``--openshell-scenarios`` whose traits the test's ``openshell_traits`` marker
    accepts, narrowed by its ``openshell_scenarios`` and ``openshell_exclude_scenarios`` markers,
    once per transport of ``--openshell-transport`` (transport by transport). A test none of them
    applies to is deselected.

    Each parameter is a :class:`~pytest_openshell.transports.ScenarioKey`: the scenario's key
    (``openshell.scenarios[request.param]`` finds it) with ``.transport``, the transport to deploy
    its gateways with (``openshell_gateway_factory.deploy(transport=...)``), and ``.id``, the
    test id: the key with one transport (``test_x[kill]``), ``key-transport`` with several
    (``test_x[kill-supervisor]``).

    Call it from a ``pytest_generate_tests`` hook to drive a fixture of your own, e.g. one with
    ``scope="session"`` that runs each scenario once for many tests (the conformance suite does).
    """
    state = metafunc.config.stash[SESSION_KEY]
    state.catalogue.argnames.add(argname)
    node = metafunc.definition
    node.stash[_BY_SCENARIO] = True  # its transport comes with its scenario
    traits = node.get_closest_marker("openshell_traits")
    wanted = node.get_closest_marker("openshell_scenarios")
    excluded = node.get_closest_marker("openshell_exclude_scenarios")
    chosen = applicable(
        state.selected_scenarios(),
        applies=None if traits is None else Applies.of(*traits.args, **traits.kwargs),
        only=None if wanted is None else wanted.args,
        exclude=() if excluded is None else excluded.args,
    )
    if not chosen:
        # Deselected at collection (pytest_collection_modifyitems): not a skip that looks like
        # coverage, and not an error either.
        metafunc.parametrize(
            argname,
            [pytest.param(None, marks=pytest.mark.openshell_no_scenario)],
            indirect=True,
            ids=["no-scenario"],
            scope=scope,  # type: ignore[arg-type]
        )
        return
    params = [
        ScenarioKey(scenario.key, transport, state.scenario_id(scenario.key, transport))
        for transport in state.transports
        for scenario in chosen
    ]
    metafunc.parametrize(
        argname,
        params,
        indirect=True,
        ids=[param.id for param in params],
        scope=scope,  # type: ignore[arg-type]
    )


#: Set on a test parametrised with scenarios: it takes its transport from them.
_BY_SCENARIO = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after every hook that parametrises scenarios
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "openshell_scenario" in metafunc.fixturenames:
        parametrize_scenarios(metafunc, "openshell_scenario")
    state = metafunc.config.stash[SESSION_KEY]
    if (
        len(state.transports) > 1
        and "openshell_transport" in metafunc.fixturenames
        and not metafunc.definition.stash.get(_BY_SCENARIO, False)
    ):
        # A test with no scenario that deploys gateways runs once per transport too.
        metafunc.parametrize(
            "openshell_transport", state.transports, indirect=True, ids=state.transports
        )


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openshell(request: pytest.FixtureRequest) -> OpenShellSession:
    """The plugin's state for this process: settings, run id, engine, driver, scenarios."""
    state = request.config.stash[SESSION_KEY]
    if not state.settings.enabled:
        pytest.skip(DISABLED)
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


@pytest.fixture
def openshell_transport(openshell: OpenShellSession, request: pytest.FixtureRequest) -> str:
    """The transport this test's gateways are deployed with (``openshell_gateway``,
    ``openshell_fresh_gateway``): its scenario's, else its own parameter (a test that uses this
    fixture runs once per transport of ``--openshell-transport``), else the run's only one."""
    if hasattr(request, "param"):
        return str(request.param)
    param = request.node.stash.get(SCENARIO_KEY, None)
    return param.transport if param is not None else openshell.transports[0]


@pytest.fixture(scope="session")
def openshell_shared_gateway(openshell_gateway_factory: GatewayFactory) -> GatewayHandle:
    """The gateway behind ``openshell_gateway`` (of the run's first transport), deployed once
    per worker."""
    return openshell_gateway_factory.shared()


@pytest.fixture
def openshell_gateway(
    openshell: OpenShellSession,
    openshell_gateway_factory: GatewayFactory,
    openshell_transport: str,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayHandle]:
    """A deployed gateway shared by the tests of this worker that do not disrupt it, one per
    transport (``openshell_fresh_gateway`` gives a test one of its own). The engine is held
    shared while the test runs, so another worker's daemon restart waits for it, and the test
    starts only once the gateway answers (after such a restart, say)."""
    openshell_shared_gateway: GatewayHandle = (
        # the fixture (which a conftest may override) for the run's first transport
        request.getfixturevalue("openshell_shared_gateway")
        if openshell_transport == openshell.transports[0]
        else openshell_gateway_factory.shared(openshell_transport)
    )
    with openshell.access.shared():
        try:
            poll_until(
                lambda: openshell.driver_ready(openshell_shared_gateway),
                bool,
                timeout=openshell.settings.api_timeout,
                what=f"the API of the shared gateway {openshell_shared_gateway.name}",
                describe=lambda ready: "no healthy answer",
            )
        except ReadinessTimeout as exc:
            pytest.fail(str(exc), pytrace=False)
        yield openshell_shared_gateway


@pytest.fixture
def openshell_fresh_gateway(
    openshell_gateway_factory: GatewayFactory,
    openshell_transport: str,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayHandle]:
    """A gateway deployed for this test alone (on its transport) and destroyed after it: for
    tests that disrupt it. Other scopes: make your own fixture from
    ``openshell_gateway_factory``."""
    gateway = openshell_gateway_factory.deploy(label="f", transport=openshell_transport)
    yield gateway
    openshell_gateway_factory.destroy(gateway, failed=request.node.stash.get(FAILED_KEY, False))


@pytest.fixture
def openshell_sandbox_factory(openshell: OpenShellSession) -> Iterator[SandboxFactory]:
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
    """One lifecycle scenario, parametrised over the selected keys (``--openshell-scenarios``,
    markers ``openshell_scenarios`` / ``openshell_exclude_scenarios``), once per transport (the
    test's ``openshell_fresh_gateway`` is deployed on it). ``run(gateway)`` disrupts
    and recovers a gateway and times the recovery; ``disrupt(gateway)`` and ``recover()`` do the
    two halves. A scenario the engine or driver cannot perform is skipped with the reason."""
    scenario = openshell.scenarios[request.param]
    transport = getattr(request.param, "transport", openshell.transports[0])
    missing = scenario.missing_capabilities(
        openshell.engine, openshell.driver, openshell.settings.options_for(transport)
    )
    if missing:
        pytest.skip("; ".join(missing))
    with openshell.engine_use(scenario):
        # The runs are this test's own: their artefacts go with its report alone.
        yield ScenarioFixture(openshell, scenario, request.node.stash.setdefault(ARTEFACTS_KEY, []))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, before any fixture runs, a test that needs a driver ability the driver lacks, or
    Docker objects a gateway on another platform does not have."""
    marker = item.get_closest_marker("openshell_abilities")
    state = item.config.stash[SESSION_KEY]
    if not state.settings.enabled or state.setup_error:
        return
    if item.get_closest_marker("openshell_docker") is not None:
        elsewhere = on_docker(state.driver)
        if elsewhere is not None:
            pytest.skip(f"this check reads Docker objects: {elsewhere}")
    if marker is None:
        return
    needed: tuple[Ability, ...] = marker.args
    lacking = [ability.lacking(state.driver) for ability in needed if not ability.of(state.driver)]
    if lacking:
        pytest.skip("; ".join(lacking))


# -- reporting ----------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[SESSION_KEY]
    unselected = [item for item in items if item.get_closest_marker("openshell_no_scenario")]
    if unselected:
        config.hook.pytest_deselected(items=unselected)
        items[:] = [item for item in items if not item.get_closest_marker("openshell_no_scenario")]
    for item in items:
        marker = item.get_closest_marker("openshell_property")
        number = marker and (marker.args[0] if marker.args else marker.kwargs.get("number"))
        if number:
            item.user_properties.append((PROPERTY, int(number)))
        param = state.catalogue.param_of(item)
        if param is not None:
            item.stash[SCENARIO_KEY] = param
            item.user_properties.append((SCENARIO, param.key))
            item.user_properties.append((TRANSPORT, param.transport))
            # Under `pytest -n N --dist loadgroup`, the tests of one scenario run share a worker,
            # so a scenario fixture of wider scope runs once for all of them.
            item.add_marker(pytest.mark.xdist_group(f"openshell-{param.id}"))
        elif len(state.transports) > 1:
            transport = getattr(getattr(item, "callspec", None), "params", {}).get(
                "openshell_transport"
            )
            if transport is not None:
                item.user_properties.append((TRANSPORT, str(transport)))


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """A line per selected scenario: how many checks run with it, and its traits."""
    state = config.stash[SESSION_KEY]
    if not state.settings.enabled or not state.catalogue.argnames or is_worker(config):
        return []
    counts = collections.Counter(_scenario_id(item) for item in items)
    return [
        f"openshell: scenario {state.scenario_id(scenario.key, transport)}: "
        f"{counts[state.scenario_id(scenario.key, transport)]} checks "
        f"({scenario.declared_traits.describe()})"
        for transport in state.transports
        for scenario in state.selected_scenarios()
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash[SESSION_KEY]
    _complete_report(item, report, state)
    if state.settings.enabled:
        # Nothing secret in the terminal report, the JUnit XML or what xdist sends on: the
        # traceback (an ssh command line holds a session token), captured output and logs,
        # properties, and the artefacts' summary.
        report.longrepr = state.redactor.in_place(report.longrepr)
        report.sections = [
            (title, state.redactor.text(content)) for title, content in report.sections
        ]
        report.user_properties = state.redactor.value(list(report.user_properties))
    return report


def _complete_report(item: pytest.Item, report: pytest.TestReport, state: OpenShellSession) -> None:
    key = _scenario_id(item)
    run = state.records.runs.get(key) if key else None
    if run is not None and report.when == "call":
        timings = [(RECOVERY, run.recovery_seconds), (DOWNTIME, run.downtime_seconds)]
        report.user_properties.extend(timings)
        item.user_properties.extend(timings)  # junitxml reads them from the teardown report
    if report.failed:
        state.records.record_failure(key)
        item.stash[FAILED_KEY] = True
        collected = [*item.stash.get(ARTEFACTS_KEY, []), *(state.artefacts.get(key) if key else [])]
        for artefacts in collected:
            written = None
            with contextlib.suppress(OSError):
                written = artefacts.write(state.settings.artifacts, item.nodeid)
            report.sections.append(
                (f"openshell artefacts ({report.when})", artefacts.summary(written))
            )


def _scenario_id(item: pytest.Item) -> str | None:
    """The run's name for the scenario run of ``item`` (its key, with its transport when the run
    has several)."""
    param = item.stash.get(SCENARIO_KEY, None)
    return None if param is None else param.id


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Once the last test of a scenario run has reported (the next test has another scenario, or
    none), drop the run's shared artefacts: a later run of that scenario reports its own."""
    try:
        return (yield)
    finally:
        param = item.stash.get(SCENARIO_KEY, None)
        following = None if nextitem is None else nextitem.stash.get(SCENARIO_KEY, None)
        if param is not None and following != param:
            item.config.stash[SESSION_KEY].artefacts.done(param.id)


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
    if any(r.failed for r in reports):
        state.records.failed = True
    for report in reports:
        state.summary.add(report)
    kept = state.records.kept_lines()
    if kept:
        terminalreporter.section("openshell: kept (--openshell-keep)")
        for line in kept:
            terminalreporter.write_line(line)
    if state.summary.empty:
        return
    terminalreporter.section("openshell: scenario x property")
    for line in state.summary.table():
        terminalreporter.write_line(line)
    with contextlib.suppress(OSError):
        path = state.summary.write_json(state.settings.artifacts)
        terminalreporter.write_line(f"summary written to {path}")
