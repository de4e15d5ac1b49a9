"""The workload's own rules, without a gateway: a thread that dies is an error with its
traceback (never a silent gap), and what the client was told maps to an outcome."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from openshell_core.errors import NotFoundError, ReadinessTimeout, StateError
from openshell_core.host.api_client import GatewayRpcError
from pytest_openshell.history import Outcome
from pytest_openshell.summary import OPERATIONS, RunSummary
from pytest_openshell.workload import ClientWorkload, WorkloadError, classify


class _Broken:
    """A session whose key lookup raises: the first create of a thread dies on it."""

    settings = SimpleNamespace(images=SimpleNamespace(sandbox="img"))

    def user_public_key(self) -> str:
        raise RuntimeError("the key file vanished")


def test_a_workload_thread_that_dies_is_an_error_with_its_traceback() -> None:
    workload = ClientWorkload(
        _Broken(),  # type: ignore[arg-type]
        SimpleNamespace(name="gw"),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        scenario="kill",
        seed=11,
    )
    workload.start()
    with pytest.raises(ReadinessTimeout, match="the key file vanished"):
        workload.progress(1, timeout=30)  # at once: waiting cannot help when a thread died
    with pytest.raises(WorkloadError) as caught:
        workload.stop()
    text = str(caught.value)
    assert "the workload of kill broke off; its history has a gap" in text
    assert "Traceback" in text and "RuntimeError: the key file vanished" in text
    assert "--openshell-seed 11" in text


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (NotFoundError("sandbox", "a"), Outcome.FAIL),
        (StateError("sandbox 'a' is not ready"), Outcome.FAIL),
        (GatewayRpcError("x", code="FAILED_PRECONDITION"), Outcome.FAIL),
        (GatewayRpcError("x", code="UNAVAILABLE"), Outcome.UNKNOWN),
        (GatewayRpcError("x", code="DEADLINE_EXCEEDED"), Outcome.UNKNOWN),
        (GatewayRpcError("x", code="INTERNAL"), Outcome.UNKNOWN),
        (OSError("connection reset"), Outcome.UNKNOWN),
    ],
)
def test_what_the_client_was_told_decides_the_outcome(error: Exception, outcome: Outcome) -> None:
    assert classify(error) is outcome


def test_the_run_summary_shows_the_operations_checked_per_scenario() -> None:
    summary = RunSummary()
    props: list[tuple[str, Any]] = [
        ("openshell.scenario", "kill"),
        ("openshell.property", 18),
        (OPERATIONS, 42),
    ]
    summary.add(
        SimpleNamespace(  # type: ignore[arg-type]
            user_properties=props, outcome="passed", when="call", nodeid="t", longrepr=None
        )
    )
    assert summary.table()[0].split()[-2:] == ["ops", "checked"]
    assert summary.table()[1].split()[-1] == "42"
    assert summary.as_json()["scenarios"]["kill"]["operations_checked"] == 42  # type: ignore[index]
