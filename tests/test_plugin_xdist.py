"""Under ``pytest -n N --dist loadgroup`` the tests of one scenario share a worker, so a fixture of
session scope runs each scenario once (pytest-xdist's own grouping does not work with pytest 9.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_openshell.xdist_scheduling import scenario_group

pytest_plugins = ["pytester"]

KEYS = (
    "stop-start",
    "kill",
    "docker-restart",
    "docker-crash",
    "docker-daemon-kill",
    "start-while-running",
)


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("conformance/test_ssh.py::test_a[kill]", "kill"),
        ("t.py::test_a[docker-restart]", "docker-restart"),
        ("t.py::test_a[kill-2]", "kill"),
        ("t.py::test_a[2-kill]", "kill"),
        ("t.py::test_a[1-docker-crash-x]", "docker-crash"),
        ("t.py::test_a[docker-daemon-kill]", "docker-daemon-kill"),  # not "kill"
        ("t.py::test_a[start-while-running]", "start-while-running"),
        ("t.py::test_a[skill]", None),
        ("t.py::test_a", None),
    ],
)
def test_the_scenario_key_is_found_in_the_parameter_id(nodeid: str, group: str | None) -> None:
    assert scenario_group(nodeid, KEYS) == group


def test_a_session_scoped_scenario_fixture_runs_once_per_scenario_across_two_workers(
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
                out.write(f"{{request.param}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
            return request.param
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("check", range(4))
        def test_a(scenario_once, check): pass

        def test_b(scenario_once): pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=private",
        "--openshell-build=no", "--openshell-scenarios=stop-start,kill,remove-keep-volume",
        "-n", "2", "--dist", "loadgroup",
    )  # fmt: skip
    result.assert_outcomes(passed=15)
    setups = log.read_text().splitlines()
    assert sorted(line.split()[0] for line in setups) == [
        "kill",
        "remove-keep-volume",
        "stop-start",
    ]
    assert {line.split()[1] for line in setups} == {"gw0", "gw1"}, "one worker did everything"
