"""Extending the plugin through its hooks: the worked example of examples/cli_driver.py (a driver
that operates gateways through a command line, and a scenario of its own), run for real."""

from __future__ import annotations

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


def test_the_installed_conformance_suite_runs_against_a_driver_of_ones_own(
    pytester: pytest.Pytester, example: Path, images: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's downstream command: the suite from the installed package, the gateway
    operated by the example's CLI driver."""
    log = pytester.path / "cli-driver.log"
    monkeypatch.setenv("CLI_DRIVER_LOG", str(log))
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "pytest_openshell.conformance",
        *FLAGS,
        "--openshell-gateway=cli",
        "--openshell-scenarios=stop-start",
        "-q",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= 20
    commands = log.read_text().splitlines()
    assert any(" gateway stop --name " in line for line in commands), commands
    assert any(" gateway start --name " in line for line in commands), commands
