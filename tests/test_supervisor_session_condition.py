"""The ``SupervisorSession`` condition a ``supervisor`` gateway puts on each sandbox, as the host's
API client reads it (property 13 reads the session through it; pure logic)."""

from __future__ import annotations

from openshell_core.grpc_api import pb
from openshell_core.host.api_client import _info
from openshell_core.wire import contract


def _sandbox(*conditions: pb.SandboxCondition) -> pb.Sandbox:
    sandbox = pb.Sandbox()
    sandbox.metadata.name = "s"
    sandbox.status.conditions.extend(conditions)
    return sandbox


def _session(status: str, reason: str, message: str) -> pb.SandboxCondition:
    return pb.SandboxCondition(
        type=contract.SUPERVISOR_SESSION_CONDITION, status=status, reason=reason, message=message
    )


def test_a_live_session_is_read_with_its_id_instance_and_epoch() -> None:
    message = contract.SUPERVISOR_SESSION_MESSAGE.format(session="ab12", instance="i-1", epoch=3)
    session = _info(_sandbox(_session("True", "Connected", message))).supervisor_session
    assert session is not None and session.live and not session.refused
    assert session.identity == ("ab12", "i-1", 3)


def test_a_refused_supervisor_is_read_as_refused_with_no_session() -> None:
    refused = _session("False", contract.SUPERVISOR_SESSION_REFUSED, "s1 already has a session")
    session = _info(_sandbox(refused)).supervisor_session
    assert session is not None and session.refused and not session.live
    assert session.identity is None


def test_a_sandbox_without_the_condition_reports_no_session() -> None:
    assert _info(_sandbox()).supervisor_session is None
