"""Fault switch names: exactly the regressions of docs/conformance.md."""

from __future__ import annotations

import pytest

from openshell_core.errors import UsageError
from openshell_core.faults import Fault, active_faults, format_faults, parse_faults

CONFORMANCE_TABLE = {
    "regenerate-handshake-secret",
    "container-id-hostname",
    "no-workspace-volume",
    "reseed-workspace",
    "no-network-reconcile",
    "no-restart-policy",
    "rotate-pki-on-resume",
    "wipe-volume-on-resume-failure",
    "pull-on-resume",
    "forget-sandboxes-on-start",
    "relabel-on-upgrade",
    "error-is-terminal",
    # issue 16: acknowledged is not yet durable (caught by the history checker, property 18)
    "ack-before-commit",
    "lost-append",
    # issue 15: a sandbox in Error, its own command
    "error-refuses-stop",
    "no-command-replay",
    # issue 15: the sandbox-token signing key
    "regenerate-token-key",
    # issue 15: a token that expired while the gateway was down
    "token-expiry-strands",
    # issue 15: a supervisor coming back refused as a duplicate (P13)
    "stale-supervisor-owner",
}


def test_every_regression_of_the_conformance_table_has_a_switch() -> None:
    assert {fault.value for fault in Fault} == CONFORMANCE_TABLE


def test_no_fault_is_on_by_default() -> None:
    assert active_faults({}) == frozenset()


def test_faults_round_trip_through_the_environment_variable() -> None:
    faults = parse_faults(" no-restart-policy, reseed-workspace ,")
    assert faults == {Fault.NO_RESTART_POLICY, Fault.RESEED_WORKSPACE}
    assert active_faults({"OPENSHELL_FAULTS": format_faults(faults)}) == faults


def test_an_unknown_fault_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        parse_faults("no-such-fault")
    assert "reseed-workspace" in str(caught.value)
