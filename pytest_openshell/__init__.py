"""pytest-openshell: lifecycle scenarios for OpenShell gateways as pytest fixtures.

Enable it with ``pytest --openshell-gateway``. The names below are what tests, conftest files and
downstream drivers use; everything else in the package may change.
"""

from __future__ import annotations

from typing import Any

from pytest_openshell import survival as _survival
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
from pytest_openshell.survival import GiveUp, SurvivalRecord, SurvivalViolation

__all__ = [
    "Ability",
    "Applies",
    "EngineScope",
    "GatewayDriver",
    "GatewayFate",
    "GatewayHandle",
    "GatewaySpec",
    "GiveUp",
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
    "Traits",
    "parametrize_scenarios",
]


def __getattr__(name: str) -> Any:
    # The old name of GiveUp, for downstream probes; warns (see pytest_openshell.survival).
    if name == "Terminal":
        return _survival.Terminal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
