"""Several transports in one run (``--openshell-transport=nssh1,supervisor``): every scenario runs
once per transport, with ids, records and a summary that tell the transports apart; one transport
keeps everything as it was."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_openshell.drivers import check_transports
from pytest_openshell.summary import PROPERTY, SCENARIO, TRANSPORT, RunSummary
from pytest_openshell.transports import ScenarioKey, scenario_id
from pytest_openshell.xdist_scheduling import scenario_group

pytest_plugins = ["pytester"]

BOTH = "--openshell-transport=nssh1,supervisor"

SHOW_TRANSPORTS = """
    from pytest_openshell.plugin import SESSION_KEY

    def test_show(request):
        settings = request.config.stash[SESSION_KEY].settings
        print("TRANSPORTS", ",".join(settings.transports))
"""


# -- the option ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("nssh1,supervisor", "nssh1,supervisor"),
        ("supervisor,nssh1", "supervisor,nssh1"),
        (" supervisor , nssh1,supervisor ", "supervisor,nssh1"),
        ("supervisor", "supervisor"),
    ],
)
def test_a_list_of_transports_is_read_in_its_order_each_once(
    pytester: pytest.Pytester, given: str, read: str
) -> None:
    pytester.makepyfile(SHOW_TRANSPORTS)
    result = pytester.runpytest("-s", f"--openshell-transport={given}")
    result.stdout.fnmatch_lines([f"*TRANSPORTS {read}"])


def test_a_list_of_transports_is_read_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_OPENSHELL_TRANSPORT", "supervisor,nssh1")
    pytester.makepyfile(SHOW_TRANSPORTS)
    pytester.runpytest("-s").stdout.fnmatch_lines(["*TRANSPORTS supervisor,nssh1"])


@pytest.mark.parametrize("given", ["nssh1,carrier-pigeon", ",", "nssh1;supervisor"])
def test_an_unknown_transport_in_a_list_is_a_usage_error_naming_the_known_ones(
    pytester: pytest.Pytester, given: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--openshell-transport={given}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--openshell-transport takes nssh1 or supervisor, or a comma*"])


def test_help_says_a_list_runs_the_suite_once_per_transport(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    assert "or a comma list of both: the run then runs every scenario once per transport" in text
    assert "A driver that cannot choose its gateway's transport refuses a list" in text


# -- names of scenario runs ---------------------------------------------------------------------


def test_a_scenario_is_named_by_its_key_alone_when_the_run_has_one_transport() -> None:
    assert scenario_id("kill", "supervisor", ("supervisor",)) == "kill"


def test_a_scenario_is_named_with_its_transport_when_the_run_has_several() -> None:
    assert scenario_id("kill", "supervisor", ("nssh1", "supervisor")) == "kill-supervisor"


def test_a_scenario_key_equals_its_plain_key_and_finds_the_scenario() -> None:
    key = ScenarioKey("kill", "supervisor", "kill-supervisor")
    assert key == "kill"
    assert {"kill": 1}[key] == 1
    assert f"{key}" == "kill"
    assert type(key.key) is str


def test_scenario_keys_of_two_transports_differ_so_pytest_sets_the_fixture_up_again() -> None:
    assert ScenarioKey("kill", "nssh1") != ScenarioKey("kill", "supervisor")
    assert ScenarioKey("kill", "nssh1") == ScenarioKey("kill", "nssh1")


def test_a_scenario_key_survives_pickling_with_its_transport_and_id() -> None:
    key = pickle.loads(pickle.dumps(ScenarioKey("kill", "supervisor", "kill-supervisor")))
    assert (key, key.transport, key.id) == ("kill", "supervisor", "kill-supervisor")


def test_each_transports_run_of_a_scenario_is_an_xdist_group_of_its_own() -> None:
    ids = [scenario_id(k, t, ("nssh1", "supervisor")) for t in ("nssh1", "supervisor") for k in
           ("kill", "docker-daemon-kill", "stop-start")]  # fmt: skip
    assert scenario_group("t.py::test_a[kill-supervisor]", ids) == "kill-supervisor"
    assert scenario_group("t.py::test_a[kill-nssh1]", ids) == "kill-nssh1"
    assert scenario_group("t.py::test_a[docker-daemon-kill-nssh1]", ids) == (
        "docker-daemon-kill-nssh1"
    )
    assert scenario_group("t.py::test_a[kill-supervisor-2]", ids) == "kill-supervisor"
    assert scenario_group("t.py::test_a[supervisor]", ids) is None


# -- collection: ids and order ------------------------------------------------------------------

SCENARIO_TESTS = """
    def test_with_a_scenario(openshell_scenario): pass

    def test_with_a_gateway(openshell_fresh_gateway): pass

    def test_with_neither(openshell): pass
"""


def collected(pytester: pytest.Pytester, *flags: str) -> list[str]:
    pytester.makepyfile(SCENARIO_TESTS)
    result = pytester.runpytest(
        "--collect-only", "-q", "--openshell-gateway", "--openshell-scenarios=stop-start,kill",
        *flags,
    )  # fmt: skip
    return [line.split("::", 1)[1] for line in result.outlines if "::" in line]


def test_with_one_transport_the_test_ids_are_the_scenario_keys(pytester: pytest.Pytester) -> None:
    assert collected(pytester, "--openshell-transport=supervisor") == [
        "test_with_a_scenario[stop-start]",
        "test_with_a_scenario[kill]",
        "test_with_a_gateway",
        "test_with_neither",
    ]


def test_with_two_transports_every_scenario_runs_once_per_transport_transport_by_transport(
    pytester: pytest.Pytester,
) -> None:
    assert collected(pytester, BOTH) == [
        "test_with_a_scenario[stop-start-nssh1]",
        "test_with_a_scenario[kill-nssh1]",
        "test_with_a_scenario[stop-start-supervisor]",
        "test_with_a_scenario[kill-supervisor]",
        "test_with_a_gateway[nssh1]",
        "test_with_a_gateway[supervisor]",
        "test_with_neither",
    ]


def test_each_scenario_run_carries_its_transport_to_its_gateways(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest
        from pytest_openshell.session_parts import SCENARIO_KEY

        def pytest_collection_finish(session):
            for item in session.items:
                param = item.stash.get(SCENARIO_KEY, None)
                props = dict(item.user_properties)
                print("ITEM", item.name, param and (param.key, param.transport, param.id),
                      props.get("openshell.transport"))
        """
    )
    pytester.makepyfile(SCENARIO_TESTS)
    result = pytester.runpytest(
        "--collect-only", "-s", "--openshell-gateway", "--openshell-scenarios=kill", BOTH
    )
    result.stdout.fnmatch_lines(
        [
            "ITEM test_with_a_scenario[kill-nssh1] ('kill', 'nssh1', 'kill-nssh1') nssh1",
            "ITEM test_with_a_scenario[kill-supervisor] "
            "('kill', 'supervisor', 'kill-supervisor') supervisor",
            "ITEM test_with_a_gateway[nssh1] None nssh1",
            "ITEM test_with_a_gateway[supervisor] None supervisor",
        ]
    )


def test_a_session_scoped_scenario_fixture_is_set_up_once_per_scenario_and_transport(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest
        from pytest_openshell import parametrize_scenarios

        def pytest_generate_tests(metafunc):
            if "scenario_once" in metafunc.fixturenames:
                parametrize_scenarios(metafunc, "scenario_once", scope="session")

        @pytest.fixture(scope="session")
        def scenario_once(request, openshell):
            print("SETUP", request.param, request.param.transport, openshell.scenarios[request.param].key)
            return request.param
        """
    )
    pytester.makepyfile(
        """
        def test_a(scenario_once): pass

        def test_b(scenario_once): pass
        """
    )
    result = pytester.runpytest(
        "-s", "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=private",
        "--openshell-build=no", "--openshell-scenarios=stop-start,kill", BOTH,
    )  # fmt: skip
    result.assert_outcomes(passed=8)
    setups = re.findall(r"SETUP [\w-]+ \w+ [\w-]+", result.stdout.str())
    assert setups == [
        "SETUP stop-start nssh1 stop-start",
        "SETUP kill nssh1 kill",
        "SETUP stop-start supervisor stop-start",
        "SETUP kill supervisor kill",
    ]


# -- drivers that cannot choose -----------------------------------------------------------------


class _OwnTransport:
    """A driver with no ``transports`` attribute: its gateway speaks what it speaks."""


class _OneTransport:
    transports = ("nssh1",)


def test_a_driver_that_cannot_choose_refuses_a_list_of_transports() -> None:
    problem = check_transports(_OwnTransport(), ("nssh1", "supervisor"))
    assert problem is not None
    assert "the gateway driver _OwnTransport cannot choose its gateways' transport" in problem


def test_a_driver_that_cannot_choose_runs_its_own_with_one_transport() -> None:
    assert check_transports(_OwnTransport(), ("supervisor",)) is None


def test_a_driver_that_deploys_one_transport_refuses_another() -> None:
    problem = check_transports(_OneTransport(), ("nssh1", "supervisor"))
    assert problem == (
        "--openshell-transport=nssh1,supervisor: the gateway driver _OneTransport deploys "
        "nssh1 only, not supervisor; run it with --openshell-transport=nssh1"
    )


def test_a_run_whose_driver_cannot_choose_fails_its_tests_with_the_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest

        class OwnDriver:
            def deploy(self, spec): ...
            def start(self, gateway, *, image=None): ...
            def stop(self, gateway): ...
            def destroy(self, gateway): ...

        @pytest.hookimpl(tryfirst=True)
        def pytest_openshell_gateway_driver(target):
            return OwnDriver() if target == "own" else None
        """
    )
    pytester.makepyfile("def test_x(openshell_fresh_gateway): pass")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--openshell-gateway=own", "--openshell-engine=private",
        "--openshell-build=no", BOTH,
    )  # fmt: skip
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*the gateway driver OwnDriver cannot choose*"])


# -- the summary ----------------------------------------------------------------------------------


def _report(scenario: str, transport: str | None, number: int, outcome: str) -> Any:
    props: list[tuple[str, Any]] = [(SCENARIO, scenario), (PROPERTY, number)]
    if transport is not None:
        props.append((TRANSPORT, transport))
    return SimpleNamespace(
        user_properties=props,
        outcome=outcome,
        when="call",
        nodeid=f"t.py::test_{number}[{scenario}-{transport}]",
        longrepr=None,
    )


def test_with_one_transport_the_summary_is_one_scenario_by_property_table() -> None:
    summary = RunSummary(("nssh1",))
    summary.add(_report("kill", "nssh1", 1, "passed"))
    assert summary.table()[0].split()[:2] == ["scenario", "P1"]
    assert summary.table()[1].split()[:2] == ["kill", "pass"]
    assert list(summary.as_json()["scenarios"]) == ["kill"]  # type: ignore[call-overload]


def test_with_two_transports_the_summary_has_a_table_per_transport_with_its_counts() -> None:
    summary = RunSummary(("nssh1", "supervisor"))
    summary.add(_report("kill", "nssh1", 1, "passed"))
    summary.add(_report("kill", "supervisor", 1, "failed"))
    summary.add(_report("kill", "supervisor", 2, "passed"))
    lines = summary.table()
    nssh1, supervisor = (
        lines.index("transport nssh1: 1 passed"),
        lines.index("transport supervisor: 1 passed, 1 failed"),
    )
    assert nssh1 < supervisor
    assert lines[nssh1 + 2].split()[:3] == ["kill", "pass", "-"]
    assert lines[supervisor + 2].split()[:3] == ["kill", "FAIL", "pass"]
    doc: Any = summary.as_json()
    assert doc["scenarios"]["kill-supervisor"]["properties"]["1"]["outcome"] == "failed"
    assert doc["scenarios"]["kill-nssh1"]["transport"] == "nssh1"
    assert doc["transports"]["supervisor"] == {
        "passed": 1, "failed": 1, "error": 0, "skipped": 0,
    }  # fmt: skip


def _skip(scenario: str, number: int, reason: str) -> Any:
    report = _report(scenario, "nssh1", number, "skipped")
    report.longrepr = ("conformance/t.py", 1, f"Skipped: {reason}")
    return report


def test_a_scenario_none_of_whose_checks_ran_is_said_to_be_skipped_with_the_reason() -> None:
    summary = RunSummary(("nssh1",))
    summary.add(_skip("long-downtime", 1, "the nssh1 transport gives no tokens"))
    summary.add(_skip("long-downtime", 2, "the nssh1 transport gives no tokens"))
    assert "  long-downtime: skipped: the nssh1 transport gives no tokens" in summary.table()


def test_a_check_skipped_beside_checks_that_ran_does_not_mark_its_scenario_skipped() -> None:
    summary = RunSummary(("nssh1",))
    summary.add(_report("kill", "nssh1", 1, "passed"))
    summary.add(_skip("kill", 17, "no sandbox token under nssh1"))
    lines = summary.table()
    assert lines[1].split()[:3] == ["kill", "pass", "skip"]
    assert not [line for line in lines if "skipped" in line], lines


def test_a_report_without_a_transport_belongs_to_the_runs_first() -> None:
    summary = RunSummary(("supervisor", "nssh1"))
    summary.add(_report("kill", None, 1, "passed"))
    assert summary.rows() == [("supervisor", "kill")]


@pytest.mark.parametrize("given", ["nssh1,supervisor", "supervisor"])
def test_the_kubernetes_target_refuses_any_transport_but_its_own_before_it_starts(
    pytester: pytest.Pytester, given: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--openshell-gateway=kubernetes", f"--openshell-transport={given}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--openshell-transport={given}: the kubernetes target deploys nssh1 gateways only*"]
    )


def test_under_loadgroup_each_scenario_runs_once_per_transport_across_two_workers(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    log = tmp_path / "setups"
    pytester.makeconftest(
        f"""
        import os
        import pytest
        from pytest_openshell import parametrize_scenarios

        def pytest_generate_tests(metafunc):
            if "scenario_once" in metafunc.fixturenames:
                parametrize_scenarios(metafunc, "scenario_once", scope="session")

        @pytest.fixture(scope="session")
        def scenario_once(request):
            with open({str(log)!r}, "a") as out:
                out.write(f"{{request.param.id}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
            return request.param
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("check", range(3))
        def test_a(scenario_once, check): pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=private",
        "--openshell-build=no", "--openshell-scenarios=stop-start,kill", BOTH,
        "-n", "2", "--dist", "loadgroup",
    )  # fmt: skip
    result.assert_outcomes(passed=12)
    setups = log.read_text().splitlines()
    assert sorted(line.split()[0] for line in setups) == [
        "kill-nssh1",
        "kill-supervisor",
        "stop-start-nssh1",
        "stop-start-supervisor",
    ]
    assert {line.split()[1] for line in setups} == {"gw0", "gw1"}, "one worker did everything"
