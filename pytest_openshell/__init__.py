"""pytest-openshell: lifecycle scenarios for OpenShell gateways as pytest fixtures.

Enable it with ``pytest --openshell-gateway``. The names below are what tests, conftest files and
downstream drivers use; everything else in the package may change.
"""

from __future__ import annotations

from pytest_openshell.drivers import (
    Ability,
    GatewayDriver,
    GatewayHandle,
    GatewaySpec,
    ReferenceDriver,
)
from pytest_openshell.fixtures import HeldSession, ScenarioFixture
from pytest_openshell.plugin import parametrize_scenarios
from pytest_openshell.scenarios import (
    Applies,
    EngineScope,
    GatewayFate,
    HeldSessionFate,
    SandboxFate,
    Scenario,
    ScenarioRun,
    StateOutcome,
    Traits,
)
from pytest_openshell.session import OpenShellSession
from pytest_openshell.survival import SurvivalRecord, SurvivalViolation, Terminal

__all__ = [
    "Ability",
    "Applies",
    "EngineScope",
    "GatewayDriver",
    "GatewayFate",
    "GatewayHandle",
    "GatewaySpec",
    "HeldSession",
    "HeldSessionFate",
    "OpenShellSession",
    "ReferenceDriver",
    "SandboxFate",
    "Scenario",
    "ScenarioFixture",
    "ScenarioRun",
    "StateOutcome",
    "SurvivalRecord",
    "SurvivalViolation",
    "Terminal",
    "Traits",
    "parametrize_scenarios",
]
