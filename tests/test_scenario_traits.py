"""Scenario traits and the selection of checks by them: pure logic, no engine."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, cast

import pytest

from openshell_core.wire.contract import TRANSPORT_NSSH1, TRANSPORT_SUPERVISOR
from pytest_openshell import scenarios
from pytest_openshell.drivers import Ability, GatewayHandle, GatewaySpec, ReferenceDriver
from pytest_openshell.options import GatewayOptions
from pytest_openshell.scenarios import (
    BUILTIN,
    SHORT_TOKEN_LIFETIME,
    Applies,
    EngineScope,
    GatewayFate,
    HeldSessionFate,
    SandboxFate,
    Scenario,
    ScenarioError,
    ScenarioRun,
    StateOutcome,
    Traits,
    applicable,
    refused,
    select,
)

KEPT_ALL = Traits(
    gateway=GatewayFate.RESTARTED,
    sandboxes=SandboxFate.KEPT,
    state=StateOutcome.SURVIVES,
    held_session=HeldSessionFate.CARRIES_ON,
)
BY_KEY = {scenario.key: scenario for scenario in BUILTIN}


def scenario(key: str, traits: Traits | None) -> Scenario:
    return Scenario(key, "a test scenario", lambda run: None, traits=traits)


def keys(scenarios: list[Scenario]) -> list[str]:
    return [s.key for s in scenarios]


def test_every_builtin_scenario_declares_consistent_traits() -> None:
    assert refused(BUILTIN) == []


def test_the_default_set_covers_every_trait_value() -> None:
    core = [s.declared_traits for s in BUILTIN if s.core]
    assert {t.gateway for t in core} == set(GatewayFate)
    assert set().union(*(t.sandbox_fates for t in core)) == set(SandboxFate)
    assert {t.state for t in core} == set(StateOutcome)
    assert {t.held_session for t in core} == set(HeldSessionFate)
    assert {t.engine for t in core} == set(EngineScope)


def test_the_default_set_re_makes_a_sandbox_container() -> None:
    """A regression in workspace seeding or the workspace volume shows only when a sandbox's
    container is made anew: the default run must do that."""
    assert any(SandboxFate.RECREATED in s.declared_traits.sandbox_fates for s in BUILTIN if s.core)


def test_a_scenario_without_traits_is_refused_with_what_to_declare() -> None:
    [problem] = scenario("container-restart", None).problems()
    assert problem.startswith("scenario 'container-restart' declares no traits")
    for needed in ("gateway=GatewayFate.", "sandboxes=SandboxFate.", "state=StateOutcome.",
                   "held_session=HeldSessionFate.", "RECREATED", "docs/conformance.md"):  # fmt: skip
        assert needed in problem


def test_using_a_scenario_without_traits_raises_the_same_message() -> None:
    with pytest.raises(ScenarioError, match="declares no traits"):
        _ = scenario("bare", None).declared_traits


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"state": StateOutcome.LOST}, "state=StateOutcome.LOST goes with gateway=GatewayFate."),
        ({"gateway": GatewayFate.REMOVED}, "goes with gateway=GatewayFate.REMOVED"),
        ({"sandboxes": SandboxFate.RESTARTED}, "held_session=HeldSessionFate.CARRIES_ON needs"),
        (
            {"some_sandboxes": frozenset({SandboxFate.RECREATED})},
            "some_sandboxes needs abilities to include Ability.SANDBOX_CONTAINERS",
        ),
        ({"failed_resume": True}, "failed_resume=True needs gateway=GatewayFate.RECREATED"),
        ({"outlives_tokens": True}, "outlives_tokens=True needs abilities to include Ability."),
        (
            {
                "outlives_tokens": True,
                "gateway": GatewayFate.KEPT,
                "abilities": frozenset({Ability.TOKEN_LIFETIME}),
            },
            "outlives_tokens=True needs gateway=GatewayFate.RESTARTED or RECREATED",
        ),
        (
            {
                "held_session": HeldSessionFate.ENDS,
                "some_sandboxes": frozenset({SandboxFate.REMOVED}),
                "abilities": frozenset({Ability.SANDBOX_CONTAINERS}),
            },
            "some_sandboxes may not contain SandboxFate.REMOVED",
        ),
    ],
)
def test_inconsistent_traits_are_refused_saying_what_goes_together(
    changes: dict[str, object], says: str
) -> None:
    problems = scenario("odd", dataclasses.replace(KEPT_ALL, **changes)).problems()
    assert any(says in problem for problem in problems), problems
    assert all(problem.startswith("scenario 'odd': ") for problem in problems)


def test_a_negative_control_is_consistent() -> None:
    wiped = Traits(
        gateway=GatewayFate.REMOVED,
        sandboxes=SandboxFate.REMOVED,
        state=StateOutcome.LOST,
        held_session=HeldSessionFate.ENDS,
    )
    assert wiped.problems() == []


def test_a_scenario_with_the_traits_of_kill_gets_every_check_kill_gets() -> None:
    mine = scenario("container-restart", BY_KEY["kill"].declared_traits)
    checks = [
        Applies(state=StateOutcome.SURVIVES),
        Applies(gateway=frozenset({GatewayFate.KEPT, GatewayFate.RESTARTED})),
        Applies(held_session=HeldSessionFate.CARRIES_ON),
        Applies(sandboxes=frozenset({SandboxFate.KEPT, SandboxFate.RESTARTED})),
        Applies(engine=EngineScope.DAEMON),
        Applies(failed_resume=True),
    ]
    for check in checks:
        assert check.matches(mine.declared_traits) == check.matches(BY_KEY["kill"].declared_traits)


def test_a_check_on_sandbox_fates_needs_every_fate_the_scenario_deals() -> None:
    adopted = Applies(sandboxes=frozenset({SandboxFate.KEPT, SandboxFate.RESTARTED}))
    assert adopted.matches(BY_KEY["docker-restart"].declared_traits)
    # sandbox-reschedule keeps most sandboxes but re-makes one: the check does not apply.
    assert not adopted.matches(BY_KEY["sandbox-reschedule"].declared_traits)


def test_checks_select_scenarios_by_traits() -> None:
    assert keys(applicable(BUILTIN, applies=Applies(state=StateOutcome.LOST))) == [
        "recreate",
        "destroy",
    ]
    assert keys(applicable(BUILTIN, applies=Applies(engine=EngineScope.DAEMON))) == [
        "docker-restart",
        "docker-crash",
        "docker-daemon-kill",
    ]
    assert keys(applicable(BUILTIN, applies=Applies(failed_resume=True))) == ["resume-failure"]
    recreated = Applies(gateway=frozenset({GatewayFate.RECREATED}))
    assert keys(applicable(BUILTIN, applies=recreated)) == [
        "remove-keep-volume",
        "image-upgrade",
        "resume-failure",
    ]


def test_a_check_without_a_traits_marker_applies_to_every_scenario() -> None:
    assert keys(applicable(BUILTIN)) == keys(list(BUILTIN))
    assert Applies().describe() == "every scenario"


def test_key_markers_still_narrow_a_projects_own_tests() -> None:
    chosen = applicable(BUILTIN, only=("kill", "destroy"), exclude=("destroy",))
    assert keys(chosen) == ["kill"]


def test_marker_arguments_become_an_applies() -> None:
    assert Applies.of(state=StateOutcome.SURVIVES, gateway=GatewayFate.KEPT) == Applies(
        state=StateOutcome.SURVIVES, gateway=frozenset({GatewayFate.KEPT})
    )
    given = Applies(held_session=HeldSessionFate.ENDS)
    assert Applies.of(given) is given
    with pytest.raises(TypeError, match="unknown trait 'colour'"):
        Applies.of(colour="red")


def test_the_default_selection_is_the_core_set_in_declaration_order() -> None:
    assert keys(select(BY_KEY, "core")) == [
        "stop-start",
        "kill",
        "remove-keep-volume",
        "image-upgrade",
        "docker-restart",
        "sandbox-reschedule",
        "start-while-running",
        "destroy",
    ]
    assert keys(select(BY_KEY, "kill, core"))[0] == "kill"
    with pytest.raises(KeyError, match="unknown scenario 'reboot'"):
        select(BY_KEY, "reboot")


def test_a_daemon_scenario_has_the_engine_to_itself() -> None:
    assert [s.key for s in BUILTIN if s.exclusive] == [
        "docker-restart",
        "docker-crash",
        "docker-daemon-kill",
    ]


def test_traits_read_as_one_line() -> None:
    assert BY_KEY["sandbox-reschedule"].declared_traits.describe() == (
        "gateway kept, sandboxes kept (some recreated/restarted), state survives, "
        "held session ends, needs sandbox-containers"
    )


# -- a scenario that outlives the sandbox tokens (property 14) ----------------------------------

SUPERVISOR = GatewayOptions(transport=TRANSPORT_SUPERVISOR)


class FakeTokenDriver:
    """A driver whose gateways' tokens live ``lifetime`` seconds; records when it stopped one."""

    def __init__(self, lifetime: float | None) -> None:
        self.lifetime = lifetime
        self.stopped_at: float | None = None

    def token_lifetime(self, options: GatewayOptions) -> float | None:
        return self.lifetime

    def stop(self, gateway: object) -> None:
        self.stopped_at = time.monotonic()


def outlasting_run(driver: FakeTokenDriver) -> ScenarioRun:
    spec = GatewaySpec("gw", 1, "run", SUPERVISOR)
    handle = GatewayHandle(spec, Path("/nonexistent"))
    return ScenarioRun(BY_KEY["long-downtime"], handle, cast(Any, driver), cast(Any, None))


def test_only_long_downtime_outlives_the_tokens_and_it_is_not_in_the_default_set() -> None:
    outlived = applicable(BUILTIN, applies=Applies(outlives_tokens=True))
    assert keys(outlived) == ["long-downtime"]
    assert not BY_KEY["long-downtime"].core
    assert "long-downtime" in keys(select(BY_KEY, "all"))


def test_a_scenario_that_outlives_the_tokens_deploys_its_gateway_with_short_lived_ones() -> None:
    long_downtime = BY_KEY["long-downtime"]
    assert long_downtime.deploy_options(SUPERVISOR).sandbox_token_ttl == SHORT_TOKEN_LIFETIME
    set_already = dataclasses.replace(SUPERVISOR, sandbox_token_ttl=4.0)
    assert long_downtime.deploy_options(set_already) is set_already
    assert BY_KEY["stop-start"].deploy_options(SUPERVISOR) is SUPERVISOR


def test_the_reference_gateway_has_expiring_tokens_in_the_supervisor_transport_only(
    tmp_path: Path,
) -> None:
    driver = ReferenceDriver(cast(Any, None), tmp_path)
    short = dataclasses.replace(SUPERVISOR, sandbox_token_ttl=15.0)
    assert driver.token_lifetime(short) == 15.0
    assert driver.token_lifetime(SUPERVISOR) is None  # tokens that never expire
    assert driver.token_lifetime(dataclasses.replace(short, transport=TRANSPORT_NSSH1)) is None


def test_long_downtime_is_skipped_in_the_nssh1_transport_saying_why(tmp_path: Path) -> None:
    driver = ReferenceDriver(cast(Any, None), tmp_path)
    engine = cast(Any, None)
    long_downtime = BY_KEY["long-downtime"]
    [why] = long_downtime.missing_capabilities(engine, driver, GatewayOptions())
    assert why.startswith("scenario 'long-downtime' keeps the gateway down past the life of")
    assert "nssh1 transport gives its supervisors none that expire" in why
    assert why.endswith("run it with --openshell-transport=supervisor")
    assert long_downtime.missing_capabilities(engine, driver, SUPERVISOR) == []


def test_long_downtime_stays_down_past_the_token_lifetime_counted_from_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scenarios, "EXPIRY_MARGIN", 0.1)
    driver = FakeTokenDriver(0.5)
    run = outlasting_run(driver)
    BY_KEY["long-downtime"].disrupt(run)
    assert driver.stopped_at is not None
    assert time.monotonic() - driver.stopped_at >= 0.6
    assert run.notes["token_lifetime"] == 0.5
    assert run.notes["down_for"] >= 0.6


def test_long_downtime_refuses_a_gateway_whose_tokens_never_expire() -> None:
    driver = FakeTokenDriver(None)
    with pytest.raises(ScenarioError, match="needs a gateway whose sandbox tokens expire"):
        BY_KEY["long-downtime"].disrupt(outlasting_run(driver))
    assert driver.stopped_at is None  # refused before anything was done


def test_the_reference_driver_deploys_with_the_token_lifetime_of_its_options(
    tmp_path: Path,
) -> None:
    driver = ReferenceDriver(cast(Any, None), tmp_path)
    options = BY_KEY["long-downtime"].deploy_options(SUPERVISOR)
    deploy = driver._options(GatewaySpec("gw", 1, "run", options), port=1)
    assert (deploy.transport, deploy.sandbox_token_ttl) == (
        TRANSPORT_SUPERVISOR,
        SHORT_TOKEN_LIFETIME,
    )
