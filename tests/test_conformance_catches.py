"""The regression catch table: the conformance suite against the reference gateway, once with no
fault switch (it must pass) and once per fault switch (named conformance tests must fail).

Each run is a real ``pytest conformance --openshell-gateway`` in a subprocess, on the private
engine, with the one scenario that exposes its fault; two runs go at a time. The table of what
each fault made fail is written to ``openshell-artifacts/catch-table.md`` (the README carries it).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from openshell_core.faults import Fault
from openshell_core.images import ImageSet
from openshell_core.wire.contract import DEFAULT_TRANSPORT

ROOT = Path(__file__).parent.parent
#: Conformance tests not tied to a scenario: they run once, in the clean run.
STANDALONE = "not fresh_deploy_leaves_nothing and not missing_local_image"
PARALLEL_RUNS = 2
RUN_TIMEOUT = 20 * 60


P18 = "test_acknowledged.py::test_every_acknowledged_operation_of_the_workload_holds_after_recovery"
#: The option that makes a run's gateways speak the ``supervisor`` transport.
SUPERVISOR = "--openshell-transport=supervisor"
_TRANSPORT_OPTION = "--openshell-transport="


@dataclass(frozen=True)
class Catch:
    """The scenario that exposes a fault, and conformance tests that must fail under it."""

    scenario: str
    tests: tuple[str, ...]
    #: options of the run beyond the fault and the scenario
    args: tuple[str, ...] = ()

    @property
    def transport(self) -> str:
        """The transport its run's gateways speak (``--openshell-transport=`` in :attr:`args`)."""
        chosen = [
            a.removeprefix(_TRANSPORT_OPTION) for a in self.args if a.startswith(_TRANSPORT_OPTION)
        ]
        return chosen[-1] if chosen else DEFAULT_TRANSPORT


CATCH_TABLE: dict[Fault, Catch] = {
    Fault.REGENERATE_TOKEN_KEY: Catch(
        "stop-start",
        (
            "test_secrets.py::test_the_handshake_secret_and_the_pki_are_unchanged",
            "test_token_key.py::test_the_token_signing_key_is_unchanged",
        ),
    ),
    Fault.REGENERATE_HANDSHAKE_SECRET: Catch(
        "stop-start",
        (
            "test_secrets.py::test_the_handshake_secret_and_the_pki_are_unchanged",
            "test_ssh.py::test_a_new_ssh_session_reaches_every_old_sandbox_with_its_old_host_key",
        ),
    ),
    Fault.CONTAINER_ID_HOSTNAME: Catch(
        "remove-keep-volume",
        ("test_identity.py::test_hostname_and_node_name_are_the_gateways_node_name_unchanged",),
    ),
    Fault.NO_WORKSPACE_VOLUME: Catch(
        "sandbox-reschedule", ("test_workspace.py::test_marker_files_keep_their_bytes_and_mode",)
    ),
    Fault.RESEED_WORKSPACE: Catch(
        "stop-start", ("test_workspace.py::test_image_files_the_user_changed_or_deleted_stay_so",)
    ),
    Fault.NO_NETWORK_RECONCILE: Catch(
        "kill", ("test_health.py::test_the_gateway_answers_its_health_api",)
    ),
    Fault.NO_RESTART_POLICY: Catch(
        "docker-restart",
        (
            "test_health.py::test_the_gateway_answers_its_health_api",
            "test_restart_policy.py::test_the_gateway_restart_policy_is_unless_stopped",
        ),
    ),
    Fault.ROTATE_PKI_ON_RESUME: Catch(
        "stop-start",
        (
            "test_secrets.py::test_the_handshake_secret_and_the_pki_are_unchanged",
            "test_secrets.py::test_the_gateway_presents_the_same_server_certificate",
        ),
    ),
    Fault.WIPE_VOLUME_ON_RESUME_FAILURE: Catch(
        "resume-failure",
        (
            "test_failure_handling.py::"
            "test_a_failed_resume_removes_the_container_keeps_the_volume_and_says_why",
            "test_sandboxes.py::test_every_sandbox_is_listed_with_its_id_and_name_and_no_other",
        ),
    ),
    Fault.PULL_ON_RESUME: Catch(
        "stop-start", ("test_health.py::test_the_gateway_answers_its_health_api",)
    ),
    Fault.FORGET_SANDBOXES_ON_START: Catch(
        "stop-start",
        ("test_sandboxes.py::test_every_sandbox_is_listed_with_its_id_and_name_and_no_other",),
    ),
    Fault.RELABEL_ON_UPGRADE: Catch(
        "image-upgrade",
        ("test_sandboxes.py::test_every_sandbox_is_listed_with_its_id_and_name_and_no_other",),
    ),
    Fault.ERROR_IS_TERMINAL: Catch(
        "sandbox-reschedule",
        ("test_sandboxes.py::test_a_running_sandbox_is_ready_again_and_stays_ready",),
    ),
    Fault.ACK_BEFORE_COMMIT: Catch("kill", (P18,), ("--openshell-workload",)),
    Fault.LOST_APPEND: Catch("kill", (P18,), ("--openshell-workload",)),
    Fault.ERROR_REFUSES_STOP: Catch(
        "sandbox-reschedule",
        (
            "test_sandbox_in_error.py::"
            "test_a_sandbox_in_error_accepts_stop_then_start_and_comes_back_with_its_workspace",
        ),
    ),
    Fault.NO_COMMAND_REPLAY: Catch(
        "sandbox-reschedule",
        (
            "test_own_command.py::"
            "test_the_sandboxs_own_command_ran_once_at_every_start_of_its_container",
        ),
    ),
    Fault.TOKEN_EXPIRY_STRANDS: Catch(
        "long-downtime",
        (
            "test_long_downtime.py::"
            "test_every_running_sandbox_is_ready_and_reachable_after_its_token_expired",
        ),
        # Stranded sandboxes never come back: each check waits out its budget, so a short one.
        (SUPERVISOR, "--openshell-recovery-timeout=60"),
    ),
    Fault.STALE_SUPERVISOR_OWNER: Catch(
        "stop-start",
        (
            "test_supervisors_come_back.py::"
            "test_every_running_sandboxs_supervisor_session_comes_back_new_and_none_is_refused",
        ),
        (SUPERVISOR,),
    ),
}

CORE = ("stop-start", "kill", "remove-keep-volume", "image-upgrade", "docker-restart")


@dataclass(frozen=True)
class CleanRun:
    """The run with no fault of one transport: the scenarios and options of every fault run of
    that transport, so that each fault run's failure is the fault's."""

    transport: str
    scenarios: tuple[str, ...]
    args: tuple[str, ...]
    #: whether it also runs the checks tied to no scenario (once in the whole table)
    standalone: bool

    @property
    def name(self) -> str:
        return "clean" if self.transport == DEFAULT_TRANSPORT else f"clean-{self.transport}"

    def options(self) -> list[str]:
        chosen = [f"--openshell-scenarios={','.join(self.scenarios)}", *self.args]
        return chosen if self.standalone else [*chosen, "-k", STANDALONE]


def clean_runs(table: dict[Fault, Catch]) -> dict[str, CleanRun]:
    """One clean run per transport the table's rows use: the default one over :data:`CORE` and
    its rows' scenarios with the workload (and the standalone checks); each other one over its
    rows' scenarios and options alone (CI time: the default run covers the rest)."""
    runs: dict[str, CleanRun] = {}
    for transport in dict.fromkeys([DEFAULT_TRANSPORT, *(c.transport for c in table.values())]):
        rows = [c for c in table.values() if c.transport == transport]
        default = transport == DEFAULT_TRANSPORT
        scenarios = [*(CORE if default else ()), *(c.scenario for c in rows)]
        args = ["--openshell-workload"] if default else []
        args += [a for c in rows for a in c.args]
        runs[transport] = CleanRun(
            transport, tuple(dict.fromkeys(scenarios)), tuple(dict.fromkeys(args)), default
        )
    return runs


CLEAN_RUNS = clean_runs(CATCH_TABLE)
#: The default transport's clean run's scenarios (kept for the README and CI notes).
CLEAN_SCENARIOS = CLEAN_RUNS[DEFAULT_TRANSPORT].scenarios


@dataclass(frozen=True)
class SuiteRun:
    """One run of the conformance suite: its exit code, tests by outcome, and its output."""

    returncode: int
    failed: frozenset[str]
    passed: frozenset[str]
    output: str
    #: why tests failed before the suite could run at all (the harness, not the fault)
    unprepared: frozenset[str] = frozenset()


#: The plugin's message when a run failed before any scenario (its set-up, not a check).
UNPREPARED = "the run could not be prepared"


def run_suite(work: Path, name: str, *args: str) -> SuiteRun:
    junit = work / f"{name}.xml"
    command = [
        sys.executable, "-m", "pytest", "conformance", "-p", "no:cacheprovider", "-q",
        # The images fixture built the images once; two runs at a time must not rebuild them.
        "--openshell-gateway", "--openshell-engine=private", "--openshell-build=no",
        f"--junitxml={junit}",
        f"--openshell-artifacts={work / name}", *args,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    failed, passed, unprepared = set(), set(), set()
    if junit.exists():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            module = str(case.get("classname", "")).rsplit(".", 1)[-1]
            test = f"{module}.py::{case.get('name')}"
            failure = case.find("failure")
            if failure is None:
                failure = case.find("error")
            if failure is not None:
                failed.add(test)
                if UNPREPARED in (failure.get("message") or ""):
                    unprepared.add((failure.get("message") or "").strip())
            elif case.find("skipped") is None:
                passed.add(test)
    return SuiteRun(
        result.returncode,
        frozenset(failed),
        frozenset(passed),
        result.stdout[-6000:],
        frozenset(unprepared),
    )


@pytest.fixture(scope="module")
def suite_runs(
    images: ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Fault | str, concurrent.futures.Future[SuiteRun]]]:
    """Every run of the table (the clean ones keyed by transport), started at once,
    :data:`PARALLEL_RUNS` at a time."""
    work = tmp_path_factory.mktemp("catch")
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        runs: dict[Fault | str, concurrent.futures.Future[SuiteRun]] = {
            transport: pool.submit(run_suite, work, clean.name, *clean.options())
            for transport, clean in CLEAN_RUNS.items()
        }
        for fault, catch in CATCH_TABLE.items():
            runs[fault] = pool.submit(
                run_suite,
                work,
                fault.value,
                f"--openshell-faults={fault.value}",
                f"--openshell-scenarios={catch.scenario}",
                "-k",
                STANDALONE,
                *catch.args,
            )
        yield runs
        for future in runs.values():
            future.cancel()
    # (a run that -k deselected was cancelled: it has no result)
    finished = {f: run for f, run in runs.items() if run.done() and not run.cancelled()}
    _write_table({key: future.result() for key, future in finished.items()})


def test_every_fault_switch_is_in_the_table() -> None:
    assert set(CATCH_TABLE) == set(Fault)


def test_every_fault_row_is_checked_against_a_clean_run_of_its_transport_and_scenario() -> None:
    for fault, catch in CATCH_TABLE.items():
        clean = CLEAN_RUNS[catch.transport]
        assert catch.scenario in clean.scenarios, fault
        assert set(catch.args) <= set(clean.args), fault


@pytest.mark.parametrize("transport", list(CLEAN_RUNS))
def test_with_no_fault_switched_on_the_suite_passes(
    transport: str, suite_runs: dict[Fault | str, concurrent.futures.Future[SuiteRun]]
) -> None:
    run = suite_runs[transport].result()
    assert run.returncode == 0 and not run.failed, run.output
    for catch in CATCH_TABLE.values():
        if catch.transport != transport:
            continue
        for test in catch.tests:
            assert f"{test}[{catch.scenario}]" in run.passed, (
                f"{test} did not run in the clean {transport} run"
            )


@pytest.mark.parametrize("fault", list(CATCH_TABLE), ids=[fault.value for fault in CATCH_TABLE])
def test_the_fault_makes_its_named_conformance_tests_fail(
    fault: Fault, suite_runs: dict[Fault | str, concurrent.futures.Future[SuiteRun]]
) -> None:
    catch = CATCH_TABLE[fault]
    run = suite_runs[fault].result()
    expected = {f"{test}[{catch.scenario}]" for test in catch.tests}
    assert run.returncode != 0, f"the suite passed with {fault.value} on:\n{run.output}"
    # A run that never got to its checks proves nothing about the fault.
    assert not run.unprepared, f"the run with {fault.value} failed to start: {set(run.unprepared)}"
    missed = expected - run.failed
    assert not missed, f"{fault.value} did not make {sorted(missed)} fail:\n{run.output}"


def _write_table(results: dict[Fault | str, SuiteRun]) -> None:
    """fault -> the tests asserted to fail, and how many failed in all (most faults also keep the
    gateway from coming back, which fails every check of that scenario)."""
    lines = [
        "| fault | scenario | named tests that fail (asserted) | failing tests in all |",
        "|---|---|---|---|",
    ]
    for fault, catch in CATCH_TABLE.items():
        run = results.get(fault)
        if run is None:
            continue
        named = ", ".join(f"`{test.split('::')[1]}`" for test in catch.tests)
        total = len(run.failed)
        scenario = f"`{catch.scenario}`"
        if catch.transport != DEFAULT_TRANSPORT:
            scenario += f" ({catch.transport})"
        lines.append(f"| `{fault.value}` | {scenario} | {named} | {total} |")
    target = ROOT / "openshell-artifacts" / "catch-table.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    every = target.with_name("catch-table-all.txt")
    every.write_text(
        "\n".join(
            f"{fault.value}: {', '.join(sorted(run.failed))}"
            for fault, run in results.items()
            if isinstance(fault, Fault)
        )
        + "\n"
    )
