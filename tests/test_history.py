"""The history checker (property P18), rule by rule: hand-written histories that must pass and
histories that must fail, and the refusal of files it cannot check."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from pytest_openshell.history import (
    Event,
    History,
    HistoryError,
    Kind,
    Observation,
    ObservedSandbox,
    Operation,
    Outcome,
    PhaseSample,
    Rule,
    check,
    dump,
    load,
)

_counter = itertools.count()
LABELS = {"owner": "w1"}
ENV = {"GREETING": "hi"}
IMAGE = "openshell/sandbox:test"
PATH = "/sandbox/log.txt"


def op(kind: Kind, sandbox: str, at: float, outcome: str = "ok", **extra: Any) -> Operation:
    """An operation invoked at ``at`` that took 0.5 s."""
    if kind is Kind.CREATE:
        extra.setdefault("labels", LABELS)
        extra.setdefault("environment", ENV)
        extra.setdefault("image", IMAGE)
        if outcome == "ok":
            extra.setdefault("sandbox_id", f"id-{sandbox}")
    if kind is Kind.APPEND:
        extra.setdefault("path", PATH)
        extra.setdefault("via", "exec")
    return Operation(
        index=next(_counter),
        process="w1",
        kind=kind,
        sandbox=sandbox,
        invoked=at,
        completed=at + 0.5,
        outcome=Outcome(outcome),
        **extra,
    )


def listed(name: str, phase: str = "READY", **extra: Any) -> ObservedSandbox:
    fields: dict[str, Any] = {"labels": LABELS, "environment": ENV, "image": IMAGE}
    fields.update(extra)
    fields.setdefault("id", f"id-{name}")
    return ObservedSandbox(name=name, phase=phase, **fields)


def history(ops: list[Operation], *sandboxes: ObservedSandbox, **observed: Any) -> History:
    return History(
        scenario="kill",
        seed=7,
        operations=ops,
        observation=Observation(at=100.0, sandboxes=tuple(sandboxes), **observed),
    )


def rules(h: History) -> set[Rule]:
    return {v.rule for v in check(h)}


# -- an acknowledged create exists, with its id and everything its create said ----------------


def test_an_acknowledged_create_that_is_listed_as_created_passes() -> None:
    assert check(history([op(Kind.CREATE, "a", 1)], listed("a"))) == []


def test_an_acknowledged_create_that_is_not_listed_is_a_violation_naming_it() -> None:
    create = op(Kind.CREATE, "a", 1)
    violations = check(history([create]))
    assert [v.rule for v in violations] == [Rule.CREATE_LOST]
    assert violations[0].operations == (create,)
    assert f"#{create.index} w1 create a [1.00-1.50 s ok]" in str(violations[0])


def test_an_acknowledged_create_listed_with_another_id_is_a_violation() -> None:
    h = history([op(Kind.CREATE, "a", 1)], listed("a", id="other"))
    assert rules(h) == {Rule.CREATE_LOST}


@pytest.mark.parametrize(
    "changed",
    [{"labels": {}}, {"environment": {"GREETING": "bye"}}, {"image": "other:1"}],
    ids=["labels", "environment", "image"],
)
def test_an_acknowledged_create_listed_without_what_it_said_is_a_violation(
    changed: dict[str, Any],
) -> None:
    h = history([op(Kind.CREATE, "a", 1)], listed("a", **changed))
    violations = check(h)
    assert [v.rule for v in violations] == [Rule.CREATE_LOST]
    assert next(iter(changed)) in violations[0].message


def test_a_create_whose_delete_was_acknowledged_may_be_gone() -> None:
    h = history([op(Kind.CREATE, "a", 1), op(Kind.DELETE, "a", 3)])
    assert check(h) == []


def test_a_create_whose_delete_is_unknown_may_be_gone_or_listed() -> None:
    ops = [op(Kind.CREATE, "a", 1), op(Kind.DELETE, "a", 3, "unknown")]
    assert check(history(ops)) == []
    assert check(history(ops, listed("a"))) == []


def test_a_refused_delete_does_not_excuse_a_missing_sandbox() -> None:
    h = history([op(Kind.CREATE, "a", 1), op(Kind.DELETE, "a", 3, "fail")])
    assert rules(h) == {Rule.CREATE_LOST}


# -- nothing exists that no create explains ------------------------------------------------------


def test_a_sandbox_no_operation_created_is_a_violation() -> None:
    assert rules(history([], listed("stranger"))) == {Rule.UNEXPLAINED}


def test_a_sandbox_whose_create_was_refused_is_a_violation() -> None:
    h = history([op(Kind.CREATE, "a", 1, "fail")], listed("a"))
    assert rules(h) == {Rule.UNEXPLAINED}


def test_a_refused_create_that_is_not_listed_passes() -> None:
    assert check(history([op(Kind.CREATE, "a", 1, "fail")])) == []


def test_a_sandbox_listed_after_its_acknowledged_delete_is_a_violation() -> None:
    h = history([op(Kind.CREATE, "a", 1), op(Kind.DELETE, "a", 3)], listed("a"))
    assert rules(h) == {Rule.UNEXPLAINED}


# -- no id listed twice -----------------------------------------------------------------------


def test_an_id_listed_twice_is_a_violation() -> None:
    ops = [op(Kind.CREATE, "a", 1), op(Kind.CREATE, "b", 1)]
    h = history(ops, listed("a"), listed("b", id="id-a"))
    violations = check(h)
    assert Rule.DUPLICATE in {v.rule for v in violations}
    assert any("id id-a is listed 2 times" in v.message for v in violations)


def test_a_name_listed_twice_is_a_violation() -> None:
    h = history([op(Kind.CREATE, "a", 1)], listed("a"), listed("a", id="id-a2"))
    assert Rule.DUPLICATE in rules(h)


def test_distinct_ids_and_names_pass() -> None:
    ops = [op(Kind.CREATE, "a", 1), op(Kind.CREATE, "b", 1)]
    assert check(history(ops, listed("a"), listed("b"))) == []


# -- every acknowledged append present, in order, exactly once ----------------------------------


def appends(*specs: tuple[str, float, str]) -> list[Operation]:
    return [op(Kind.APPEND, "a", at, outcome, line=line) for line, at, outcome in specs]


def with_file(ops: list[Operation], lines: list[str]) -> History:
    return history([op(Kind.CREATE, "a", 0), *ops], listed("a"), files={"a": {PATH: tuple(lines)}})


def test_acknowledged_appends_present_in_order_pass() -> None:
    ops = appends(("a-1", 1, "ok"), ("a-2", 2, "ok"), ("a-3", 3, "ok"))
    assert check(with_file(ops, ["a-1", "a-2", "a-3"])) == []


def test_a_missing_acknowledged_append_is_a_violation_naming_it() -> None:
    ops = appends(("a-1", 1, "ok"), ("a-2", 2, "ok"))
    violations = check(with_file(ops, ["a-1"]))
    assert [v.rule for v in violations] == [Rule.APPEND]
    assert violations[0].operations == (ops[1],)
    assert "'a-2'" in str(violations[0])


def test_an_append_present_twice_is_a_violation() -> None:
    ops = appends(("a-1", 1, "ok"))
    assert rules(with_file(ops, ["a-1", "a-1"])) == {Rule.APPEND}


def test_acknowledged_appends_out_of_order_are_a_violation() -> None:
    ops = appends(("a-1", 1, "ok"), ("a-2", 2, "ok"))
    violations = check(with_file(ops, ["a-2", "a-1"]))
    assert [v.rule for v in violations] == [Rule.APPEND]
    assert "out of order" in violations[0].message


def test_concurrent_appends_may_land_in_either_order() -> None:
    ops = appends(("a-1", 1, "ok"), ("a-2", 1.2, "ok"))
    assert check(with_file(ops, ["a-2", "a-1"])) == []


def test_a_line_no_append_wrote_is_a_violation() -> None:
    assert rules(with_file(appends(("a-1", 1, "ok")), ["a-1", "zz-9"])) == {Rule.APPEND}


def test_a_refused_append_present_is_a_violation() -> None:
    ops = appends(("a-1", 1, "fail"))
    assert rules(with_file(ops, ["a-1"])) == {Rule.APPEND}
    assert check(with_file(ops, [])) == []


def test_an_unreadable_file_with_acknowledged_appends_is_a_violation() -> None:
    h = history(
        [op(Kind.CREATE, "a", 0), *appends(("a-1", 1, "ok"))],
        listed("a"),
        unreadable={"a": "ssh exited with 255"},
    )
    violations = check(h)
    assert [v.rule for v in violations] == [Rule.APPEND]
    assert "ssh exited with 255" in violations[0].message


# -- an unknown happened wholly or not at all ---------------------------------------------------


def test_an_unknown_append_may_be_present_once_or_absent() -> None:
    ops = appends(("a-1", 1, "ok"), ("a-2", 2, "unknown"))
    assert check(with_file(ops, ["a-1", "a-2"])) == []
    assert check(with_file(ops, ["a-1"])) == []


def test_half_an_unknown_append_is_a_violation() -> None:
    ops = appends(("a-1", 1, "ok"), ("line-22", 2, "unknown"))
    assert rules(with_file(ops, ["a-1", "line-2"])) == {Rule.PARTIAL}


def test_an_unknown_create_may_be_listed_whole_or_absent() -> None:
    create = op(Kind.CREATE, "a", 1, "unknown")
    assert check(history([create])) == []
    assert check(history([create], listed("a", id="some-id"))) == []


def test_an_unknown_create_listed_with_half_its_spec_is_a_violation() -> None:
    h = history([op(Kind.CREATE, "a", 1, "unknown")], listed("a", id="x", labels={}))
    assert rules(h) == {Rule.PARTIAL}


# -- a sandbox acknowledged as stopped is not running ------------------------------------------


def test_an_acknowledged_stop_listed_as_stopped_passes() -> None:
    h = history([op(Kind.CREATE, "a", 0), op(Kind.STOP, "a", 2)], listed("a", "STOPPED"))
    assert check(h) == []


def test_an_acknowledged_stop_listed_as_running_is_a_violation() -> None:
    stop = op(Kind.STOP, "a", 2)
    violations = check(history([op(Kind.CREATE, "a", 0), stop], listed("a", "READY")))
    assert [v.rule for v in violations] == [Rule.STOPPED_RUNNING]
    assert violations[0].operations == (stop,)


def test_a_start_after_the_stop_may_leave_it_running() -> None:
    ops = [op(Kind.CREATE, "a", 0), op(Kind.STOP, "a", 2), op(Kind.START, "a", 4, "unknown")]
    assert check(history(ops, listed("a", "READY"))) == []


def test_a_start_that_ended_before_the_stop_does_not_excuse_running() -> None:
    ops = [op(Kind.CREATE, "a", 0), op(Kind.START, "a", 1), op(Kind.STOP, "a", 2)]
    assert rules(history(ops, listed("a", "READY"))) == {Rule.STOPPED_RUNNING}


# -- after the settle window, phases stop changing --------------------------------------------


def samples(*phases: str) -> tuple[PhaseSample, ...]:
    return tuple(PhaseSample(10.0 + i, {"a": phase}) for i, phase in enumerate(phases))


def test_phases_that_stay_after_the_settle_window_pass() -> None:
    h = history(
        [op(Kind.CREATE, "a", 0)],
        listed("a"),
        settled_from=11.0,
        samples=samples("PROVISIONING", "READY", "READY", "READY"),
    )
    assert check(h) == []


def test_a_phase_that_changes_after_the_settle_window_is_a_violation() -> None:
    h = history(
        [op(Kind.CREATE, "a", 0)],
        listed("a"),
        settled_from=11.0,
        samples=samples("READY", "READY", "ERROR", "READY"),
    )
    violations = check(h)
    assert [v.rule for v in violations] == [Rule.UNSETTLED]
    assert "READY (11.00 s) to ERROR (12.00 s)" in violations[0].message


# -- the file -----------------------------------------------------------------------------------


def complete() -> History:
    h = with_file(appends(("a-1", 1, "ok")), ["a-1"])
    h.events.append(Event(2.0, "disruption", until=3.0))
    return h


def test_a_history_round_trips_through_its_file(tmp_path: Path) -> None:
    h = complete()
    dump(h, tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl") == h


def test_a_truncated_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    dump(complete(), path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    with pytest.raises(HistoryError, match="truncated: it has no end record"):
        load(path)


def test_a_history_cut_mid_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    dump(complete(), path)
    path.write_text(path.read_text()[:-10])
    with pytest.raises(HistoryError, match="truncated"):
        load(path)


def test_a_history_missing_an_operation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    dump(complete(), path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for i, line in enumerate(lines) if i != 1))
    with pytest.raises(HistoryError, match="truncated: its end record counts"):
        load(path)


def test_a_history_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    dump(complete(), path)
    path.write_text(path.read_text().replace('"version": 1', '"version": 2', 1))
    with pytest.raises(HistoryError, match="version 2; this checker reads version 1 only"):
        load(path)


def test_a_file_that_is_no_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(HistoryError, match="not an openshell-history file"):
        load(path)


def test_a_history_without_an_observation_is_not_checked() -> None:
    with pytest.raises(HistoryError, match="no observation"):
        check(History(scenario="kill", seed=1))


def test_a_historys_transport_round_trips_through_its_file(tmp_path: Path) -> None:
    h = complete()
    h.transport = "supervisor"
    dump(h, tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl").transport == "supervisor"


def test_a_history_that_names_no_transport_loads_with_none(tmp_path: Path) -> None:
    dump(complete(), tmp_path / "h.jsonl")
    assert '"transport"' not in (tmp_path / "h.jsonl").read_text().splitlines()[0]
    assert load(tmp_path / "h.jsonl").transport == ""
