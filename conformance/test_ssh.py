"""Property 4: SSH survives: new sessions into old sandboxes, with their old host keys; processes
live as long as their container; a session held open across the scenario behaves as documented."""

from __future__ import annotations

import re

import pytest

from pytest_openshell import SandboxFate

from ._support import SESSION_CONTINUES, SESSION_ENDS, SETTLED, SURVIVING, Outcome

pytestmark = pytest.mark.openshell_property(number=4)

#: Seconds a held session may take to end once its tunnel is gone (ssh's own keepalive bound).
SESSION_END = 60.0


def ticks(output: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^tick (\d+)$", output, flags=re.MULTILINE)]


def echoes(output: bytes) -> list[str]:
    return [line.decode() for line in re.findall(rb"^echo (.+)$", output, flags=re.MULTILINE)]


#: What only an internal error of the host's ssh-proxy prints (Python's and asyncio's reports).
INTERNAL_ERRORS = re.compile(
    r"Traceback \(most recent call last\)|Task was destroyed|Task exception was never retrieved"
    r"|Exception ignored"
)


def internal_errors(stderr: str) -> list[str]:
    """The lines of a held session's stderr that report an internal error of ssh-proxy."""
    return [line for line in stderr.splitlines() if INTERNAL_ERRORS.search(line)]


def assert_contiguous(numbers: list[int]) -> None:
    """A counter read through the session: every number once, in order, none missing."""
    assert numbers, "the held session printed nothing"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
        f"the counter read through the session has gaps or repeats: {numbers[:5]}...{numbers[-5:]}"
    )


@pytest.mark.openshell_traits(SURVIVING)
def test_a_new_ssh_session_reaches_every_old_sandbox_with_its_old_host_key(
    lifecycle: Outcome,
) -> None:
    workload = lifecycle.workload
    lifecycle.verify(
        *(f"host key {state.name}" for state in workload.states.values()), within=SETTLED
    )
    # ssh checks the host key strictly against the one recorded before the scenario.
    lifecycle.reachable()


@pytest.mark.openshell_traits(SURVIVING)
def test_a_process_started_before_lives_exactly_as_long_as_its_container(
    lifecycle: Outcome,
) -> None:
    for state in lifecycle.workload.running_states():
        reading = lifecycle.reading(state)
        expected = lifecycle.run.sandbox_fate(state.container)
        pid1 = reading.pid1_start
        if expected is SandboxFate.KEPT:
            assert pid1 == state.pid1_start, (
                f"the container of {state.name} restarted, though {lifecycle.key} should not "
                "touch sandboxes"
            )
            assert reading.process_alive, f"process {state.process} in {state.name} is gone"
        else:
            # A new PID 1 means a new process tree: nothing started before can be in it.
            assert pid1 != state.pid1_start, (
                f"the container of {state.name} should have been {expected.value} by "
                f"{lifecycle.key}, and its PID 1 is the one from before"
            )


@pytest.mark.openshell_traits(SESSION_CONTINUES)
def test_a_session_held_open_across_the_scenario_carries_on_byte_for_byte(
    lifecycle: Outcome,
) -> None:
    """The sandbox keeps running and the gateway is only a relay: ssh-proxy resumes the stream
    through the recovered gateway, and OpenSSH sees one unbroken session."""
    lifecycle.require_recovered()
    workload = lifecycle.workload
    held = workload.held
    assert held is not None
    # A tunnel the gateway refuses for good cannot carry the old session either: fail fast.
    lifecycle.reachable()
    seen = len(ticks(held.output))
    # Three new ticks (0.2 s apart): the session's producer carries on through the new tunnel.
    held.wait_for(lambda out: len(ticks(out)) >= seen + 3, timeout=SESSION_END)
    workload.echo("after")
    held.wait_for(lambda out: f"echo {workload.echoed[-1]}".encode() in out, timeout=SESSION_END)
    assert_contiguous(ticks(held.output))
    assert echoes(held.output) == workload.echoed, (
        "the lines written before, during and after the scenario did not come back exactly once, "
        "in order"
    )
    assert held.alive
    # The user watches this stderr: the resume must say what it does, and nothing else.
    assert not internal_errors(held.errors), held.errors[-2000:]


@pytest.mark.openshell_traits(SESSION_ENDS)
def test_a_session_held_open_across_a_sandbox_restart_ends_cleanly_and_a_reconnect_works(
    lifecycle: Outcome,
) -> None:
    """The sandbox itself restarted: its end of the stream is gone, so the session ends at once
    (no hang), with everything it had delivered intact, and a new session works."""
    workload = lifecycle.workload
    held = workload.held
    assert held is not None
    code = held.wait_end(timeout=SESSION_END)
    assert code is not None, (
        f"the session held across {lifecycle.key} neither continued nor ended within "
        f"{SESSION_END:.0f} s: it hangs"
    )
    assert_contiguous(ticks(held.output))
    lifecycle.reachable()  # a new session into every sandbox, the held one's included
