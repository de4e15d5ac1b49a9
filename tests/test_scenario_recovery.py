"""A scenario's recovery wait and the plugin's parts: pure logic, no engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from openshell_core.engine import Engine, EngineMode
from openshell_core.faults import Fault
from openshell_core.images import ImageSet
from openshell_core.redaction import Redactor
from pytest_openshell import scenarios
from pytest_openshell.drivers import GatewayDriver, GatewayHandle, GatewaySpec
from pytest_openshell.options import GatewayOptions, Settings
from pytest_openshell.scenarios import BUILTIN, ScenarioRun, disrupt, recover
from pytest_openshell.session_parts import ArtefactStore, Gateways


def a_run() -> ScenarioRun:
    """A run of ``start-while-running`` whose steps touch nothing (the engine is never asked)."""
    scenario = next(s for s in BUILTIN if s.key == "start-while-running")
    engine = cast(Engine, type("NoEngine", (), {"inspect_container": lambda self, name: None})())
    driver = cast(GatewayDriver, type("NoDriver", (), {"start": lambda self, gateway: None})())
    gateway = GatewayHandle(GatewaySpec("gw-1", 1, "run"), Path("/nonexistent"))
    run = ScenarioRun(scenario, gateway, driver, engine)
    disrupt(run)
    return run


def test_recovery_ends_when_the_api_answers() -> None:
    answers = iter([False, False, True])
    run = a_run()
    recover(run, api_ready=lambda: next(answers), deadline=30, poll=0.01)
    assert run.recovered and run.gave_up is None


def test_recovery_gives_up_once_the_gateway_has_looked_down_for_good_for_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scenarios, "DOWN_GRACE", 0.2)
    run = a_run()
    recover(run, api_ready=lambda: False, deadline=30, down_reason=lambda: "it exited", poll=0.01)
    assert not run.recovered
    assert run.gave_up == "it exited"


def test_recovery_waits_on_while_the_gateway_only_looked_down_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scenarios, "DOWN_GRACE", 0.2)
    seen: list[Any] = []

    def down_now_and_then() -> str | None:
        seen.append(None)
        return "restarting" if len(seen) % 3 else None  # never down 0.2 s on end

    answers = iter([False] * 40 + [True])
    run = a_run()
    recover(
        run,
        api_ready=lambda: next(answers),
        deadline=30,
        down_reason=down_now_and_then,
        poll=0.01,
    )
    assert run.recovered, run.gave_up


def test_recovery_that_never_answers_says_so_at_its_deadline() -> None:
    run = a_run()
    recover(run, api_ready=lambda: False, deadline=0.3, poll=0.01)
    assert run.gave_up == "the gateway API did not answer within 0 s"


def test_a_gateway_spec_carries_the_runs_deploy_options_as_one_record() -> None:
    settings = Settings(
        target="reference",
        engine=EngineMode.parse("auto"),
        images=ImageSet(gateway="gw:x"),
        scenarios="core",
        faults=frozenset({next(iter(Fault))}),
        artifacts=Path("artifacts"),
        keep="never",
        build=False,
        health_timeout=7.0,
        api_timeout=8.0,
        recovery_timeout=300.0,
        settle=5.0,
    )
    gateways = Gateways(
        settings=settings,
        run_id="0123456789abcdef",
        worker="gw1",
        redactor=Redactor(),
        find_driver=lambda target: None,
    )
    spec = gateways.spec("shared")
    assert spec.options == settings.gateway_options
    assert (spec.image, spec.faults, spec.health_timeout, spec.api_timeout) == (
        "gw:x",
        settings.faults,
        7.0,
        8.0,
    )
    assert spec.name == "os01234567-w1-shared1"
    other = GatewayOptions(ImageSet(gateway="gw:y"))
    assert gateways.spec("f", other).image == "gw:y"


def test_a_scenarios_shared_artefacts_are_gone_once_it_is_done() -> None:
    store = ArtefactStore()
    artefact = cast(Any, object())
    store.of("kill").append(artefact)
    assert store.get("kill") == [artefact]
    store.done("kill")
    assert store.get("kill") == [] and store.pending == []
