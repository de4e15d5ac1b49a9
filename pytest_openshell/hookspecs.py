"""Hooks for projects that extend pytest-openshell.

Implement them in a ``conftest.py`` or a plugin. Every hook is called with keyword arguments, and an
implementation may accept any subset of them, so specs can grow without breaking implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_openshell.drivers import GatewayDriver
    from pytest_openshell.scenarios import Scenario, ScenarioRun
    from pytest_openshell.session import OpenShellSession


# -- providers (the first non-None answer wins) -----------------------------------------------


@pytest.hookspec(firstresult=True)
def pytest_openshell_gateway_driver(
    config: pytest.Config, target: str, session: OpenShellSession
) -> GatewayDriver | None:
    """Provide the driver that deploys and operates the gateway under test.

    Called once per process with the ``--openshell-gateway=TARGET`` value. Return a driver for a
    target you know (``None`` otherwise); the built-in driver answers ``reference``. A driver is a
    :class:`~pytest_openshell.GatewayDriver` (four verbs); what it can do beyond them it declares
    as abilities, the small protocols of :mod:`pytest_openshell.drivers` (see
    :class:`~pytest_openshell.Ability`).

    :param config: the pytest config.
    :param target: the requested target name.
    :param session: the plugin's state: ``session.engine`` (the Docker engine of the run),
        ``session.run_id`` (label what you create with it), ``session.config_home`` (where
        host-side files of the run's gateways belong), ``session.settings``.

    Use in conftest plugins: yes (a ``conftest.py`` at the root of the tests).
    """


# -- contributions (every answer is used) -----------------------------------------------------


@pytest.hookspec
def pytest_openshell_scenarios(config: pytest.Config) -> list[Scenario] | None:
    """Contribute extra lifecycle scenarios.

    Their keys become selectable with ``--openshell-scenarios`` and parametrise the
    ``openshell_scenario`` fixture. Each declares its :class:`~pytest_openshell.Traits` (what
    becomes of the gateway's and the sandboxes' containers, whether state survives, whether a held
    SSH session carries on, ...), and every conformance check those traits allow runs with it. A
    key that clashes with an existing one, a scenario without traits and one whose traits
    contradict each other are usage errors, each saying what to change (docs/conformance.md).

    :param config: the pytest config.

    Use in conftest plugins: yes.
    """


# -- notifications ----------------------------------------------------------------------------


@pytest.hookspec
def pytest_openshell_disrupted(run: ScenarioRun) -> None:
    """Called after a scenario disrupted a gateway, before recovery starts.

    :param run: the scenario run (its scenario, gateway and timings so far).

    Use in conftest plugins: yes.
    """


@pytest.hookspec
def pytest_openshell_recovered(run: ScenarioRun) -> None:
    """Called after a scenario's recovery finished; ``run.recovery_seconds`` is set.

    :param run: the scenario run.

    Use in conftest plugins: yes.
    """
