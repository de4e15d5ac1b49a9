"""The plugin's switch and options (pytester runs; no gateway is deployed here)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_without_the_flag_the_plugin_is_inert_and_its_tests_skip_with_the_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_uses_a_gateway(openshell_gateway):
            raise AssertionError("must not run")

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*pytest-openshell is off: pass --openshell-gateway*"])


def test_help_groups_and_explains_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*openshell: prove a gateway comes back and loses nothing*",
            "*--openshell-gateway=*TARGET*",
            "*--openshell-engine=MODE*",
            "*--openshell-scenarios=KEYS*",
            "*--openshell-artifacts=DIR*",
            "*--openshell-keep*",
            "*--openshell-recovery-timeout=SECONDS*",
        ]
    )


SHOW_SETTINGS = """
    from pytest_openshell.plugin import SESSION_KEY

    def test_show(request):
        settings = request.config.stash[SESSION_KEY].settings
        print("SETTINGS", settings.engine.value, settings.scenarios, settings.recovery_timeout)
"""


def test_an_option_is_read_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nopenshell_scenarios = kill\nopenshell_recovery_timeout = 42\n")
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*SETTINGS auto kill 42.0"])


def test_the_environment_wins_over_the_ini_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nopenshell_scenarios = kill\n")
    monkeypatch.setenv("PYTEST_OPENSHELL_SCENARIOS", "stop-start")
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*SETTINGS auto stop-start 300.0"])


def test_the_command_line_wins_over_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_OPENSHELL_ENGINE", "host")
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-s", "--openshell-engine=private")
    result.stdout.fnmatch_lines(["*SETTINGS private core 300.0"])


def test_a_bad_value_is_a_usage_error_naming_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--openshell-recovery-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--openshell-recovery-timeout takes a number of seconds*"])


def test_an_unknown_scenario_is_a_usage_error_listing_the_known_ones(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_x(openshell_scenario): pass")
    result = pytester.runpytest("--openshell-scenarios=reboot")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown scenario 'reboot'; known scenarios: stop-start, kill*"])


def test_a_path_taken_for_the_gateway_target_is_a_usage_error_saying_so(
    pytester: pytest.Pytester,
) -> None:
    pytester.mkdir("suite")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--openshell-gateway", "suite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*took 'suite', a path, for its target*"])


SHOW_TRANSPORT = """
    from pytest_openshell.plugin import SESSION_KEY

    def test_show(request):
        settings = request.config.stash[SESSION_KEY].settings
        print("TRANSPORT", settings.gateway_options.transport)
"""


@pytest.mark.parametrize(
    ("given", "carried"), [(None, "nssh1"), ("supervisor", "supervisor"), ("nssh1", "nssh1")]
)
def test_the_transport_option_is_carried_to_every_gateways_deploy_options(
    pytester: pytest.Pytester, given: str | None, carried: str
) -> None:
    pytester.makepyfile(SHOW_TRANSPORT)
    flags = [f"--openshell-transport={given}"] if given else []
    result = pytester.runpytest("-s", *flags)
    result.stdout.fnmatch_lines([f"*TRANSPORT {carried}"])


def test_an_unknown_transport_is_a_usage_error_naming_the_known_ones(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--openshell-transport=carrier-pigeon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--openshell-transport takes nssh1 or supervisor*"])
