"""The plugin in real runs (pytester, a real engine, the reference gateway): scenarios, workers,
hygiene, artefacts, the summary. Each test runs an inner pytest session in a subprocess."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HttpWaitStrategy

from openshell_core import labels, runs
from openshell_core.engine import Engine, PrivateEngine
from openshell_core.images import ImageSet

pytest_plugins = ["pytester"]

FLAGS = ("-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=private")


def run_objects(engine: Engine, run_id: str) -> list[str]:
    """Every container, volume and network labelled with ``run_id``."""
    selector = [f"{labels.RUN_ID}={run_id}"]
    return [
        *(f"container {c['Names'][0]}" for c in engine.list_containers(label_filters=selector)),
        *(f"volume {v['Name']}" for v in engine.list_volumes(label_filters=selector)),
        *(f"network {n['Name']}" for n in engine.list_networks(label_filters=selector)),
    ]


RECORD_RUN_ID = """
    import os
    import pytest

    @pytest.fixture(autouse=True)
    def _record_run_id(openshell):
        with open(os.environ["RUN_ID_FILE"], "a") as out:
            out.write(openshell.run_id + "\\n")
"""


@pytest.fixture
def run_id_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run-ids"
    monkeypatch.setenv("RUN_ID_FILE", str(path))
    return path


def recorded_run_ids(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


def test_a_scenario_runs_against_a_fresh_gateway_and_the_run_leaves_nothing(
    pytester: pytest.Pytester, engine: Engine, images: ImageSet, run_id_file: Path
) -> None:
    pytester.makeconftest(RECORD_RUN_ID)
    pytester.makepyfile(
        """
        def test_stop_start(openshell_fresh_gateway, openshell_scenario, openshell_sandbox_factory,
                            openshell_ssh, openshell_record):
            gateway = openshell_fresh_gateway
            openshell_sandbox_factory.create(gateway, "one")
            assert openshell_ssh.run(gateway, "one", "echo kept > /sandbox/f").returncode == 0
            openshell_record.track(
                "file", lambda: openshell_ssh.run(gateway, "one", "cat /sandbox/f").stdout)
            run = openshell_scenario.run(gateway)
            assert run.recovered, run.gave_up
            openshell_record.verify(within=60, settle=1)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-scenarios=stop-start", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*openshell: scenario x property*"])
    (run_id,) = recorded_run_ids(run_id_file)
    assert run_objects(engine, run_id) == []
    assert not runs.run_dir(run_id).exists(), "the run left its directory (keys) behind"


def test_the_shared_gateway_is_deployed_once_and_answers_in_every_test(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        import pytest

        names = set()

        @pytest.mark.parametrize("round", [1, 2, 3])
        def test_uses_it(openshell_gateway, openshell, round):
            assert openshell.driver_ready(openshell_gateway)
            names.add(openshell_gateway.name)
            assert len(names) == 1
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS)
    result.assert_outcomes(passed=3)


def test_with_two_transports_each_has_its_shared_gateway_speaking_it(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        import pytest

        names = {}

        @pytest.mark.parametrize("round", [1, 2])
        def test_uses_it(openshell_gateway, openshell_transport, openshell, round):
            with openshell.client(openshell_gateway) as client:
                assert client.transport() == openshell_transport
            names.setdefault(openshell_transport, set()).add(openshell_gateway.name)
            assert len(names[openshell_transport]) == 1
            assert len(set().union(*names.values())) == len(names)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-transport=nssh1,supervisor", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_uses_it[[]1-supervisor[]] PASSED*"])


def test_a_setup_that_fails_after_deploying_still_leaves_nothing(
    pytester: pytest.Pytester, engine: Engine, images: ImageSet, run_id_file: Path
) -> None:
    pytester.makeconftest(
        RECORD_RUN_ID
        + """
    @pytest.fixture
    def broken(openshell_gateway_factory, openshell_sandbox_factory):
        gateway = openshell_gateway_factory.deploy("broken")
        openshell_sandbox_factory.create(gateway, "one")
        raise RuntimeError("the fixture fails after making a gateway and a sandbox")
    """
    )
    pytester.makepyfile("def test_never_runs(broken): pass")
    result = pytester.runpytest_subprocess(*FLAGS)
    result.assert_outcomes(errors=1)
    (run_id,) = recorded_run_ids(run_id_file)
    assert run_objects(engine, run_id) == []
    assert not runs.run_dir(run_id).exists(), "the run left its directory (keys) behind"


def test_a_failing_test_gets_artefacts_written_and_attached_to_its_report(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        def test_fails_after_a_kill(openshell_fresh_gateway, openshell_scenario):
            openshell_scenario.run(openshell_fresh_gateway)
            assert False, "on purpose"
        """
    )
    artefacts = pytester.path / "artefacts"
    result = pytester.runpytest_subprocess(
        *FLAGS, "--openshell-scenarios=kill", f"--openshell-artifacts={artefacts}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*openshell artefacts (call)*", "*last lines of openshell-cluster-*"]
    )
    (written,) = [path for path in artefacts.iterdir() if path.is_dir()]
    names = sorted(path.name for path in written.iterdir())
    assert "engine-events.json" in names
    assert any(name.endswith("-inspect.json") and "before_kill" in name for name in names)
    assert any(name.endswith(".log") and "openshell-cluster-" in name for name in names)
    events = json.loads((written / "engine-events.json").read_text())
    assert any(event.get("Action") == "kill" for event in events)


def test_keep_leaves_the_gateway_up_and_prints_how_to_reach_it(
    pytester: pytest.Pytester, engine: Engine, images: ImageSet, run_id_file: Path
) -> None:
    pytester.makeconftest(RECORD_RUN_ID)
    pytester.makepyfile(
        """
        def test_fails(openshell_fresh_gateway):
            assert False, "on purpose"
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-keep")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*openshell: kept (--openshell-keep)*", "*export DOCKER_HOST=*XDG_CONFIG_HOME=*"]
    )
    (run_id,) = recorded_run_ids(run_id_file)
    kept = run_objects(engine, run_id)
    assert any(item.startswith("container /openshell-cluster-") for item in kept), kept
    runs.remove_run_objects(engine, {run_id})


def test_the_summary_reaches_junit_xml_and_a_json_file(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.openshell_property(1)
        def test_health_after(openshell_fresh_gateway, openshell_scenario, openshell):
            run = openshell_scenario.run(openshell_fresh_gateway)
            assert run.recovered
            assert openshell.driver_ready(openshell_fresh_gateway)
        """
    )
    junit = pytester.path / "junit.xml"
    artefacts = pytester.path / "artefacts"
    result = pytester.runpytest_subprocess(
        *FLAGS,
        "--openshell-scenarios=stop-start",
        f"--junitxml={junit}",
        f"--openshell-artifacts={artefacts}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["scenario*P1*recovery s*", "stop-start*pass*"])
    properties = {
        prop.get("name"): prop.get("value")
        for prop in ElementTree.parse(junit).getroot().iter("property")
    }
    assert properties["openshell.scenario"] == "stop-start"
    assert properties["openshell.property"] == "1"
    assert float(properties["openshell.recovery_seconds"]) > 0
    summary = json.loads((artefacts / "openshell-summary.json").read_text())
    cell = summary["scenarios"]["stop-start"]
    assert cell["properties"]["1"]["outcome"] == "passed"
    assert cell["recovery_seconds"] > 0


def test_the_sweep_at_start_removes_a_dead_runs_objects_and_spares_live_and_foreign_ones(
    pytester: pytest.Pytester, engine: Engine, base_image: str, unique_name: str, tmp_path: Path
) -> None:
    made: dict[str, str] = {}
    for kind in ("dead", "live", "foreign"):
        name = f"{unique_name}-{kind}"
        tag = {"org.example.owner": "someone else"} if kind == "foreign" else (
            labels.ownership(run_id=f"{unique_name}{kind}", role="test")
        )  # fmt: skip
        engine.create_network(name, labels=tag)
        engine.create_volume(name, labels=tag)
        engine.create_container(
            name=name, image=base_image, command=["true"], network=name, labels=tag,
            binds=[f"{name}:/data"],
        )  # fmt: skip
        made[kind] = name
    live_lease = runs.RunLease(f"{unique_name}live", runs.runs_dir())
    try:
        with live_lease.held():
            pytester.makepyfile("def test_anything(openshell): pass")
            result = pytester.runpytest_subprocess(*FLAGS)
            result.assert_outcomes(passed=1)
            dead, live, foreign = made["dead"], made["live"], made["foreign"]
            assert engine.inspect_container(dead) is None
            assert engine.inspect_volume(dead) is None
            assert engine.inspect_network(dead) is None
            for name in (live, foreign):
                assert engine.inspect_container(name) is not None
                assert engine.inspect_volume(name) is not None
                assert engine.inspect_network(name) is not None
    finally:
        for name in made.values():
            engine.remove_container(name)
            engine.remove_volume(name)
            engine.remove_network(name)


def test_a_neighbour_that_testcontainers_runs_on_the_engine_lives_through_a_run(
    pytester: pytest.Pytester,
    engine: Engine,
    base_image: str,
    images: ImageSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another project's test service beside ours, made the way such services are (testcontainers,
    its reaper off: its image cannot be pulled here): our sweep and teardown must not touch it."""
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")  # read when first needed
    with Network() as network:  # --bridge=none: a container needs a network of its own
        neighbour = (
            DockerContainer(base_image)
            .with_command(["python3", "-m", "http.server", "8000"])
            .with_network(network)
            .with_exposed_ports(8000)
            .waiting_for(HttpWaitStrategy(8000).for_status_code(200))
        )
        with neighbour:
            before = neighbour.get_container_id()
            pytester.makepyfile(
                """
                def test_stop_start(openshell_fresh_gateway, openshell_scenario):
                    assert openshell_scenario.run(openshell_fresh_gateway).recovered
                """
            )
            result = pytester.runpytest_subprocess(*FLAGS, "--openshell-scenarios=stop-start")
            result.assert_outcomes(passed=1)
            found = engine.inspect_container(before)
            assert found is not None and found["State"]["Running"]
            HttpWaitStrategy(8000).for_status_code(200).wait_until_ready(neighbour)


def test_ctrl_c_during_a_test_still_removes_the_runs_objects(
    pytester: pytest.Pytester, engine: Engine, images: ImageSet, run_id_file: Path
) -> None:
    pytester.makeconftest(RECORD_RUN_ID)
    ready = pytester.path / "deployed"
    pytester.makepyfile(
        f"""
        import pathlib, time

        def test_waits(openshell_fresh_gateway, openshell_sandbox_factory):
            openshell_sandbox_factory.create(openshell_fresh_gateway, "one")
            pathlib.Path({str(ready)!r}).write_text("yes")
            time.sleep(600)
        """
    )
    # Ctrl-C as a terminal delivers it: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and the inner run would never see it.
    pytest_with_ctrl_c = (
        "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.exit(pytest.main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", pytest_with_ctrl_c, *FLAGS, str(pytester.path)],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the inner test never deployed its gateway"
            time.sleep(0.2)
        (run_id,) = recorded_run_ids(run_id_file)
        assert run_objects(engine, run_id), "the run made nothing to clean up"
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                "the run did not end within 120 s of Ctrl-C; its output:\n"
                + (exc.output or b"").decode(errors="replace")[-4000:]
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()  # reaped, its pipe closed: nothing leaks into the next test
    assert b"KeyboardInterrupt" in output
    assert run_objects(engine, run_id) == []
    assert not runs.run_dir(run_id).exists(), "the run left its directory (keys) behind"


def test_two_workers_get_their_own_gateways_and_a_daemon_restart_runs_alone(
    pytester: pytest.Pytester, images: ImageSet, tmp_path: Path
) -> None:
    log = tmp_path / "intervals"
    pytester.makepyfile(
        f"""
        import json, os, time
        import pytest

        @pytest.mark.parametrize("round", [1, 2])
        def test_scenario(openshell_fresh_gateway, openshell_scenario, round):
            started = time.monotonic()
            run = openshell_scenario.run(openshell_fresh_gateway)
            assert run.recovered, run.gave_up
            with open({str(log)!r}, "a") as out:
                out.write(json.dumps({{
                    "worker": os.environ.get("PYTEST_XDIST_WORKER"),
                    "gateway": openshell_fresh_gateway.name,
                    "port": openshell_fresh_gateway.port,
                    "network": openshell_fresh_gateway.network_name,
                    "scenario": openshell_scenario.key,
                    "start": started,
                    "end": time.monotonic(),
                }}) + "\\n")
        """
    )
    result = pytester.runpytest_subprocess(
        *FLAGS, "-n", "2", "--openshell-scenarios=stop-start,docker-restart"
    )
    result.assert_outcomes(passed=4)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {entry["worker"] for entry in entries} == {"gw0", "gw1"}
    for key in ("gateway", "port", "network"):
        assert len({entry[key] for entry in entries}) == 4, f"{key}s collide: {entries}"
    restarts = [e for e in entries if e["scenario"] == "docker-restart"]
    others = [e for e in entries if e["scenario"] != "docker-restart"]
    for restart in restarts:
        for other in [*others, *(r for r in restarts if r is not restart)]:
            overlap = min(restart["end"], other["end"]) - max(restart["start"], other["start"])
            assert overlap <= 0, f"{restart} ran alongside {other}"


def test_a_daemon_scenario_on_an_engine_we_do_not_own_is_skipped_with_the_reason(
    pytester: pytest.Pytester,
    lab_engine_factory: Callable[[], PrivateEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    someone_elses = lab_engine_factory()  # outside our engines directory: not ours to restart
    someone_elses.start()
    monkeypatch.setenv("DOCKER_HOST", someone_elses.host)
    pytester.makepyfile("def test_it(openshell_scenario): raise AssertionError('must not run')")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=host",
        "--openshell-build=no", "--openshell-scenarios=docker-restart", "-rs",
    )  # fmt: skip
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*restarts the Docker daemon*--openshell-engine=private*"])


def test_fixtures_are_documented_in_pytest_fixtures(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    for name in (
        "openshell_engine",
        "openshell_gateway",
        "openshell_fresh_gateway",
        "openshell_gateway_factory",
        "openshell_sandbox_factory",
        "openshell_ssh",
        "openshell_scenario",
        "openshell_record",
    ):
        text = result.stdout.str()
        match = re.search(rf"^{name}( \[.*\])?( -- .*)?\n(\s+\S.*)", text, flags=re.MULTILINE)
        assert match, f"{name} is not listed with a docstring in pytest --fixtures"


def test_listing_tests_touches_no_engine(
    pytester: pytest.Pytester,
    lab_engine_factory: Callable[[], PrivateEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines = lab_engine_factory().root  # a directory of its own, with no engine in it
    monkeypatch.setenv("OPENSHELL_ENGINE_ROOT", str(engines))
    pytester.makepyfile("def test_it(openshell_gateway): pass")
    try:
        result = pytester.runpytest_subprocess(*FLAGS, "--collect-only", "-q")
        result.stdout.fnmatch_lines(["*1 test collected*"])
        assert not (engines / "default").exists(), "collecting started the private engine"
    finally:
        PrivateEngine("default", engines / "default").purge()


def test_a_run_that_reached_no_engine_has_nothing_to_clean(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    pytester.makepyfile(
        """
        def test_plain():
            pass

        def test_it(openshell):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=host"
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*no Docker engine answers at DOCKER_HOST=unix:///nonexistent*"])
    output = result.stdout.str() + result.stderr.str()
    assert "could not remove this run's objects" not in output


def test_a_private_engine_the_run_started_is_stopped_at_its_end(
    pytester: pytest.Pytester,
    lab_engine_factory: Callable[[], PrivateEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines = lab_engine_factory().root  # no engine runs there, and none answers elsewhere
    monkeypatch.setenv("OPENSHELL_ENGINE_ROOT", str(engines))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    private = PrivateEngine("default", engines / "default")
    pytester.makepyfile("def test_it(openshell_engine):\n    assert openshell_engine.ping()\n")
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--openshell-gateway", "--openshell-build=no"
        )
        result.assert_outcomes(passed=1)
        assert private.root.exists(), "the run used the private engine"
        assert not private.is_running(), "the engine this run started outlived it"
        assert private._engine_processes() == set()
    finally:
        private.purge()


GATEWAY_ARTEFACTS = re.compile(r"^gateway (\S+): \d+ snapshot\(s\)$", re.MULTILINE)


def test_a_failing_test_reports_the_artefacts_of_its_own_scenario_runs_only(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("round", [1, 2])
        def test_fails_after_a_run(openshell_fresh_gateway, openshell_scenario, round):
            openshell_scenario.run(openshell_fresh_gateway)
            assert False, f"on purpose: {openshell_fresh_gateway.name}"
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-scenarios=start-while-running")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    reported = GATEWAY_ARTEFACTS.findall(output)
    failed_on = re.findall(r"^E +AssertionError: on purpose: (\S+)", output, re.MULTILINE)
    assert len(set(failed_on)) == 2
    assert reported == failed_on, "each failure reports the artefacts of its own gateway alone"


SHARED_SCENARIO_RUNS = """
    import pytest
    from pytest_openshell import ScenarioFixture, parametrize_scenarios

    def pytest_generate_tests(metafunc):
        for name in ("first", "second"):
            if name in metafunc.fixturenames:
                parametrize_scenarios(metafunc, name, scope="session")

    def _run(openshell, factory, request):
        gateway = factory.deploy(label=request.fixturename)
        runner = ScenarioFixture(openshell, openshell.scenarios[request.param])
        with openshell.engine_use(runner.scenario):
            assert runner.run(gateway).recovered
        return gateway.name

    @pytest.fixture(scope="session")
    def first(openshell, openshell_gateway_factory, request):
        return _run(openshell, openshell_gateway_factory, request)

    @pytest.fixture(scope="session")
    def second(openshell, openshell_gateway_factory, request):
        return _run(openshell, openshell_gateway_factory, request)
"""


def test_the_artefacts_of_a_shared_scenario_run_are_dropped_once_its_tests_are_done(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    pytester.makeconftest(SHARED_SCENARIO_RUNS)
    pytester.makepyfile(
        """
        def test_first_run_passes(first):
            pass

        def test_second_run_fails(second):
            assert False, f"on purpose: {second}"
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-scenarios=start-while-running")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    (second,) = re.findall(r"^E +AssertionError: on purpose: (\S+)", output, re.MULTILINE)
    assert GATEWAY_ARTEFACTS.findall(output) == [second], (
        "the failure reports the second run's artefacts, not the first's as well"
    )


def test_the_workers_of_a_run_make_its_ssh_key_once_between_them(
    pytester: pytest.Pytester, images: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("GATE", str(gate))
    pytester.makepyfile(
        """
        import os
        from pathlib import Path
        from openshell_core.retry import poll_until

        def test_every_worker_reaches_for_the_key_at_once(openshell, worker_id):
            gate = Path(os.environ["GATE"])
            (gate / worker_id).touch()
            # All four workers at the start line, then all ask for the key together.
            poll_until(lambda: len(list(gate.iterdir())), lambda n: n == 4, timeout=120,
                       what="the four workers", schedule=(0.005, 1.0, 0.005))
            assert openshell.user_key().exists()
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "-n", "4", "--dist", "each")
    result.assert_outcomes(passed=4)


def test_one_run_with_two_transports_deploys_a_gateway_of_each_for_a_scenario_and_sums_up_both(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    seen = tmp_path / "transports"
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.openshell_property(1)
        def test_health_after(openshell_fresh_gateway, openshell_scenario, openshell):
            with openshell.client(openshell_fresh_gateway) as client:
                spoken = client.transport()
            with open({str(seen)!r}, "a") as out:
                out.write(f"{{openshell_fresh_gateway.spec.options.transport}} {{spoken}}\\n")
            run = openshell_scenario.run(openshell_fresh_gateway)
            assert run.recovered
        """
    )
    artefacts = pytester.path / "artefacts"
    result = pytester.runpytest_subprocess(
        *FLAGS,
        "--openshell-scenarios=stop-start",
        "--openshell-transport=nssh1,supervisor",
        f"--openshell-artifacts={artefacts}",
        "-v",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_health_after[[]stop-start-nssh1[]] PASSED*",
            "*test_health_after[[]stop-start-supervisor[]] PASSED*",
            "transport nssh1: 1 passed",
            "scenario*P1*recovery s*",
            "stop-start*pass*",
            "transport supervisor: 1 passed",
            "scenario*P1*recovery s*",
            "stop-start*pass*",
        ]
    )
    # each gateway was deployed with its transport, and its API says it speaks it
    assert seen.read_text().splitlines() == ["nssh1 nssh1", "supervisor supervisor"]
    summary = json.loads((artefacts / "openshell-summary.json").read_text())
    for transport in ("nssh1", "supervisor"):
        row = summary["scenarios"][f"stop-start-{transport}"]
        assert row["transport"] == transport
        assert row["properties"]["1"]["outcome"] == "passed"
        assert row["recovery_seconds"] > 0
