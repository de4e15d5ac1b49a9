"""The conformance suite's fixtures: one scenario run, shared by every property test of it.

``lifecycle`` is parametrised (session scope) with the selected scenarios whose traits each test's
``openshell_traits`` marker accepts, once per transport of ``--openshell-transport``, so pytest
runs each scenario once per transport and then all the tests that check its outcome. Under
``pytest -n N --dist loadgroup`` the tests of one scenario run stay on one worker.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import pytest

from pytest_openshell import OpenShellSession, ScenarioFixture, parametrize_scenarios
from pytest_openshell.fixtures import GatewayFactory, SandboxFactory, SshHelper
from pytest_openshell.scenarios import EngineScope
from pytest_openshell.transports import ScenarioKey

from ._history import ScenarioWorkload
from ._support import Outcome, Workload, first_use_after_ready


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lifecycle" in metafunc.fixturenames:
        parametrize_scenarios(metafunc, "lifecycle", scope="session")


#: Waits on a window begun at the scenario's recovery (:meth:`Outcome.begin_settling`): run last
#: among the scenario's tests, it finds that window passed while the others ran.
SETTLE_TEST = "test_a_running_sandbox_is_ready_again_and_stays_ready"


@pytest.hookimpl(trylast=True)  # after pytest has grouped the items by scenario
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def scenario(item: pytest.Item) -> object:
        callspec = getattr(item, "callspec", None)
        return None if callspec is None else callspec.params.get("lifecycle")

    for item in [i for i in items if getattr(i, "originalname", "") == SETTLE_TEST]:
        items.remove(item)
        key = scenario(item)
        last = max((n for n, other in enumerate(items) if scenario(other) == key), default=-1)
        items.insert(last + 1, item)


@pytest.fixture(scope="session")
def lifecycle(
    openshell: OpenShellSession,
    openshell_gateway_factory: GatewayFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Outcome]:
    """A gateway with the conformance workload on it, disrupted and recovered by one scenario, on
    the transport of its parameter."""
    key = request.param  # a ScenarioKey: the scenario's key, its .transport and its .id
    scenario = openshell.scenarios[key]
    options = scenario.deploy_options(openshell.settings.options_for(key.transport))
    missing = scenario.missing_capabilities(openshell.engine, openshell.driver, options)
    if missing:
        pytest.skip("; ".join(missing))
    sandboxes = SandboxFactory(openshell)
    ssh = SshHelper(openshell)
    # Runs the windows begun at recovery (the settle window of the sandboxes' phases, or the
    # negative controls') beside the scenario's other checks.
    background = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix=f"window-{key.id}")
    # The engine is shared while the gateway is made ready and while its outcome is checked;
    # a daemon scenario has it to itself only from its disruption to its recovery, so other
    # workers' scenarios wait for that part alone (they cannot overlap it: a daemon restart
    # disturbs every gateway on the engine).
    with openshell.access.shared():
        gateway = openshell_gateway_factory.deploy(
            label=_label(key, openshell), options=options, transport=key.transport
        )
        sibling = None
        workload = None
        try:
            workload = Workload(openshell, gateway, sandboxes, ssh)
            workload.prepare()
            workload.make_foreign()
            if scenario.declared_traits.engine is EngineScope.DAEMON:
                # A gateway its user stopped must stay stopped across the daemon's restart.
                sibling = openshell_gateway_factory.deploy(label="stopped", transport=key.transport)
                openshell.driver.stop(sibling)
            runner = ScenarioFixture(openshell, scenario)
            # --openshell-workload; its files are named after the run (key and transport)
            clients = ScenarioWorkload(openshell, gateway, ssh, key, name=key.id)
            clients.begin()
            with openshell.engine_use(scenario):
                # at the chosen moment of the workload's work (--openshell-strike, the seed)
                run = runner.disrupt(gateway, at_moment=clients.strike)
                workload.echo("during")  # written while the gateway is down
                runner.recover(run)
            outcome = Outcome(key, gateway, workload, run, runner, stopped_sibling=sibling)
            # Windows that begin at recovery and ask only the gateway, not the sandboxes: they
            # pass while the sandboxes are first used, the workload finishes, the tests run.
            outcome.begin_settling(background)
            outcome.begin_lost_checks(background)
            # Before anything else reaches the sandboxes: property 13's "Ready means usable".
            outcome.first_use = first_use_after_ready(outcome)
            outcome.history = clients.finish(run, held=workload.held)
            yield outcome
        finally:
            background.shutdown(wait=True)  # its probes use the gateway removed below
            ssh.close()
            if workload is not None:
                workload.remove_foreign()
            failed = key.id in openshell.failed_scenarios
            for made in (sibling, gateway):
                if made is not None:
                    openshell_gateway_factory.destroy(made, failed=failed)


def _label(key: ScenarioKey, openshell: OpenShellSession) -> str:
    """The gateway's name part: the scenario's key, and its transport's initial when the run has
    several (``docker ps`` then tells them apart)."""
    label = key.replace("-", "")[:6]
    return label if len(openshell.transports) == 1 else label + key.transport[0]
