"""Extending the plugin through its hooks: the worked example of examples/cli_driver.py (a driver
that operates gateways through a command line, and a scenario of its own), run for real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openshell_core.images import ImageSet

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).parent.parent / "examples" / "cli_driver.py"
FLAGS = ("-p", "no:cacheprovider", "--openshell-engine=private", "-p", "cli_driver")


@pytest.fixture
def example(pytester: pytest.Pytester) -> Path:
    """The example module, importable by the inner run as ``cli_driver``."""
    target = pytester.path / "cli_driver.py"
    target.write_text(EXAMPLE.read_text())
    pytester.syspathinsert()
    return target


def test_a_scenario_registered_by_a_hook_is_selectable_and_runs(
    pytester: pytest.Pytester, example: Path, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        def test_restarted_container(openshell_fresh_gateway, openshell_scenario, openshell):
            assert openshell_scenario.key == "container-restart"
            run = openshell_scenario.run(openshell_fresh_gateway)
            assert run.recovered, run.gave_up
        """
    )
    result = pytester.runpytest_subprocess(
        *FLAGS, "--openshell-gateway", "--openshell-scenarios=container-restart", "-v"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_restarted_container[[]container-restart[]] PASSED*"])


def test_a_registered_scenario_key_may_not_clash_with_a_builtin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        from pytest_openshell import Scenario

        def pytest_openshell_scenarios(config):
            return [Scenario("kill", "a second kill", lambda run: None)]
        """
    )
    pytester.makepyfile("def test_x(openshell_scenario): pass")
    result = pytester.runpytest("--openshell-gateway", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*scenario key 'kill' is registered twice*"])


def test_an_unknown_gateway_target_is_a_usage_error_naming_the_hook(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile("def test_x(openshell_gateway): pass")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--openshell-engine=private", "--openshell-gateway=elsewhere"
    )  # fmt: skip
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*no gateway driver answers to 'elsewhere'*"])


def scenario_lines(output: str) -> dict[str, int]:
    """The collection report's line per scenario: key -> number of checks."""
    found = re.findall(r"^openshell: scenario (\S+): (\d+) checks \(", output, flags=re.MULTILINE)
    return {key: int(count) for key, count in found}


def test_collection_prints_the_checks_of_each_scenario_and_a_hook_scenario_gets_all_its_traits_allow(
    pytester: pytest.Pytester, example: Path, images: ImageSet
) -> None:
    """The example's ``container-restart`` declares the traits of ``kill`` (the same container
    stopped and started, sandboxes kept, state survives, a held session carries on), so exactly
    the checks that run with ``kill`` run with it."""
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "pytest_openshell.conformance",
        *FLAGS,
        "--openshell-build=no",
        "--openshell-gateway=cli",
        "--openshell-scenarios=container-restart,kill",
        "--collect-only",
        "-q",
    )
    assert result.ret == 0, result.stdout.str()
    counts = scenario_lines(result.stdout.str())
    assert counts["container-restart"] == counts["kill"] >= 20, counts
    result.stdout.fnmatch_lines(
        [
            "openshell: scenario container-restart: * checks (gateway restarted, sandboxes kept, "
            "state survives, held session carries-on)"
        ]
    )
    ids = [line for line in result.stdout.lines if line.endswith("[container-restart]")]
    assert len(ids) == counts["container-restart"]


def test_a_hook_scenario_without_traits_is_refused_at_collection_saying_what_to_declare(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        from pytest_openshell import Scenario

        def pytest_openshell_scenarios(config):
            return [Scenario("reboot-host", "the host reboots", lambda run: None)]
        """
    )
    pytester.makepyfile("def test_x(openshell_scenario): pass")
    result = pytester.runpytest("--openshell-gateway", "-p", "no:cacheprovider", "--collect-only")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*scenario 'reboot-host' declares no traits, so no check can tell whether it applies; "
            "declare them: Scenario(key, description, disrupt, recover, traits=Traits("
            "gateway=GatewayFate.<KEPT|RESTARTED|RECREATED|REMOVED>*"
        ]
    )


def test_a_hook_scenario_with_inconsistent_traits_is_refused_at_collection(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        from pytest_openshell import (
            GatewayFate, HeldSessionFate, SandboxFate, Scenario, StateOutcome, Traits,
        )

        def pytest_openshell_scenarios(config):
            traits = Traits(
                gateway=GatewayFate.RESTARTED,
                sandboxes=SandboxFate.RESTARTED,
                state=StateOutcome.SURVIVES,
                held_session=HeldSessionFate.CARRIES_ON,
            )
            return [Scenario("host-reboot", "the host reboots", lambda run: None, traits=traits)]
        """
    )
    pytester.makepyfile("def test_x(openshell_scenario): pass")
    result = pytester.runpytest("--openshell-gateway", "-p", "no:cacheprovider", "--collect-only")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*scenario 'host-reboot': held_session=HeldSessionFate.CARRIES_ON needs every "
            "sandbox's container kept*declare HeldSessionFate.ENDS*"
        ]
    )


def test_the_installed_conformance_suite_runs_every_check_with_a_driver_and_a_scenario_of_ones_own(
    pytester: pytest.Pytester, example: Path, images: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's downstream command: the suite from the installed package, the gateway
    operated by the example's CLI driver, with a built-in scenario and the example's own."""
    log = pytester.path / "cli-driver.log"
    monkeypatch.setenv("CLI_DRIVER_LOG", str(log))
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "pytest_openshell.conformance",
        *FLAGS,
        "--openshell-gateway=cli",
        "--openshell-scenarios=stop-start,container-restart",
        "-v",
        "-rs",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    counts = scenario_lines(result.stdout.str())
    passed = [line for line in result.stdout.lines if "[container-restart] PASSED" in line]
    skipped = [line for line in result.stdout.lines if "[container-restart] SKIPPED" in line]
    # Every check its traits allow, and none skipped (the driver has the abilities they need) but
    # property 18's, which needs the workload (--openshell-workload, off here), the session part
    # of property 13, which is for the supervisor transport, and property 17's old token (the
    # CLI's gateway speaks nssh1: its supervisors hold no sessions and no tokens).
    assert sorted(line.split("::")[0] for line in skipped) == [
        "test_acknowledged.py",
        "test_supervisors_come_back.py",
        "test_token_key.py",
    ], skipped
    assert any(
        "test_a_sandbox_token_issued_before_the_scenario_still_verifies" in line for line in skipped
    ), skipped
    assert len(passed) + len(skipped) == counts["container-restart"], result.stdout.str()
    assert len(passed) >= 20, result.stdout.str()
    # A check that needs an ability the driver lacks is skipped, saying which.
    result.stdout.fnmatch_lines(
        ["SKIPPED*the gateway driver CliDriver lacks the ability 'fail-deploy'*"]
    )
    commands = log.read_text().splitlines()
    assert any(" gateway stop --name " in line for line in commands), commands
    assert any(" gateway start --name " in line for line in commands), commands
