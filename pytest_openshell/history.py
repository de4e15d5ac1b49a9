"""A history of client operations made during a disruption, and the checker of what it promises.

Each :class:`Operation` is one call a client made: when it was invoked, when it completed, and
what it was told: ``ok``, ``fail`` (the server said no) or ``unknown`` (timeout, connection lost:
it may or may not have happened). After recovery the workload adds an :class:`Observation` of
the gateway (the sandboxes it lists, the files it reads back, the phases it samples over the
settle window), and :func:`check` holds the pair to the rules of property P18, *nothing
acknowledged is lost*:

- ``create-lost``: an acknowledged create exists, with its id and everything its create said
  (name, labels, environment, image), unless its delete was acknowledged (or may have happened);
- ``unexplained``: nothing exists that no create explains (a refused create, a create whose
  delete was acknowledged, a name nobody used);
- ``duplicate``: no id and no name is listed twice;
- ``append``: every acknowledged append is present, in order, exactly once; no line is there
  that no append wrote, and a refused append left nothing;
- ``stopped-running``: a sandbox acknowledged as stopped (and not started since) is not running;
- ``unsettled``: after the settle window, phases stop changing;
- ``partial``: an ``unknown`` happened wholly or not at all (a created sandbox with half its
  spec, half a line).

The API has no per-sandbox command, so "everything its create said" is what the create request
carries: name, labels, environment, image.

The history is stored as JSON lines (:func:`dump`, :func:`load`): a header with the format and
its version, the operations, the observation, and a trailer with the counts. A file that is
truncated or of another version is refused (:class:`HistoryError`), never half-checked.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openshell_core.errors import OpenShellError

FORMAT = "openshell-history"
VERSION = 1

#: Phases in which a sandbox's container runs (or is being made to).
RUNNING_PHASES = frozenset({"READY", "PROVISIONING"})


class HistoryError(OpenShellError):
    """A history file that cannot be checked (truncated, another version, malformed)."""


class Outcome(enum.Enum):
    OK = "ok"
    #: the server said no: the operation did not happen
    FAIL = "fail"
    #: no answer (timeout, connection lost): it may have happened, wholly or not at all
    UNKNOWN = "unknown"


class Kind(enum.Enum):
    CREATE = "create"
    DELETE = "delete"
    STOP = "stop"
    START = "start"
    #: append one numbered line to a file under /sandbox
    APPEND = "append"
    #: read a file back (its lines in ``lines``)
    READ = "read"


@dataclass(frozen=True)
class Operation:
    """One client call. Times are seconds since the history began."""

    index: int
    process: str
    kind: Kind
    sandbox: str
    invoked: float
    completed: float
    outcome: Outcome
    #: create: what it asked for
    labels: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    #: create: the id the gateway answered with (ok only)
    sandbox_id: str = ""
    #: append / read: the file, the line appended, the lines read
    path: str = ""
    line: str = ""
    lines: tuple[str, ...] = ()
    #: append: the channel it went through (exec, ssh); read: likewise
    via: str = ""
    #: fail / unknown: what the client was told
    error: str = ""

    def describe(self) -> str:
        what = f"{self.kind.value} {self.sandbox}"
        if self.kind is Kind.APPEND:
            what += f" {self.line!r} to {self.path} via {self.via}"
        return (
            f"#{self.index} {self.process} {what} "
            f"[{self.invoked:.2f}-{self.completed:.2f} s {self.outcome.value}]"
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "kind": self.kind.value,
            "sandbox": self.sandbox,
            "invoked": round(self.invoked, 4),
            "completed": round(self.completed, 4),
            "outcome": self.outcome.value,
        }
        for key in ("sandbox_id", "path", "line", "via", "error", "image"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.labels:
            doc["labels"] = dict(self.labels)
        if self.environment:
            doc["environment"] = dict(self.environment)
        if self.lines:
            doc["lines"] = list(self.lines)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Operation:
        return cls(
            index=int(doc["index"]),
            process=str(doc["process"]),
            kind=Kind(doc["kind"]),
            sandbox=str(doc["sandbox"]),
            invoked=float(doc["invoked"]),
            completed=float(doc["completed"]),
            outcome=Outcome(doc["outcome"]),
            labels=dict(doc.get("labels", {})),
            environment=dict(doc.get("environment", {})),
            image=str(doc.get("image", "")),
            sandbox_id=str(doc.get("sandbox_id", "")),
            path=str(doc.get("path", "")),
            line=str(doc.get("line", "")),
            lines=tuple(doc.get("lines", ())),
            via=str(doc.get("via", "")),
            error=str(doc.get("error", "")),
        )


@dataclass(frozen=True)
class ObservedSandbox:
    """A sandbox as the gateway listed it after recovery."""

    id: str
    name: str
    phase: str
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseSample:
    """The phases of the workload's sandboxes at one moment of the settle window."""

    at: float
    phases: Mapping[str, str]


@dataclass(frozen=True)
class Observation:
    """What the gateway showed after recovery."""

    at: float
    sandboxes: tuple[ObservedSandbox, ...]
    #: sandbox name -> path -> its lines, read back after recovery
    files: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    #: sandbox name -> why its files could not be read
    unreadable: Mapping[str, str] = field(default_factory=dict)
    #: from this time on phases must not change
    settled_from: float = 0.0
    samples: tuple[PhaseSample, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 4),
            "sandboxes": [
                {
                    "id": s.id,
                    "name": s.name,
                    "phase": s.phase,
                    "image": s.image,
                    "labels": dict(s.labels),
                    "environment": dict(s.environment),
                }
                for s in self.sandboxes
            ],
            "files": {name: {p: list(ls) for p, ls in f.items()} for name, f in self.files.items()},
            "unreadable": dict(self.unreadable),
            "settled_from": round(self.settled_from, 4),
            "samples": [{"at": round(s.at, 4), "phases": dict(s.phases)} for s in self.samples],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Observation:
        return cls(
            at=float(doc["at"]),
            sandboxes=tuple(
                ObservedSandbox(
                    id=str(s["id"]),
                    name=str(s["name"]),
                    phase=str(s["phase"]),
                    image=str(s.get("image", "")),
                    labels=dict(s.get("labels", {})),
                    environment=dict(s.get("environment", {})),
                )
                for s in doc["sandboxes"]
            ),
            files={
                str(name): {str(p): tuple(ls) for p, ls in f.items()}
                for name, f in doc.get("files", {}).items()
            },
            unreadable=dict(doc.get("unreadable", {})),
            settled_from=float(doc.get("settled_from", 0.0)),
            samples=tuple(
                PhaseSample(float(s["at"]), dict(s["phases"])) for s in doc.get("samples", ())
            ),
        )


@dataclass(frozen=True)
class Event:
    """Something the scenario did or saw (disruption, gateway down, API answering, ...)."""

    at: float
    what: str
    #: for a span: when it ended (None: an instant)
    until: float | None = None


@dataclass
class History:
    """Operations, events and the observation of one scenario run."""

    scenario: str
    seed: int
    operations: list[Operation] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    observation: Observation | None = None
    #: the transport of the scenario's gateway ("" when not known: a history of an older version)
    transport: str = ""


class Rule(enum.Enum):
    CREATE_LOST = "create-lost"
    UNEXPLAINED = "unexplained"
    DUPLICATE = "duplicate"
    APPEND = "append"
    STOPPED_RUNNING = "stopped-running"
    UNSETTLED = "unsettled"
    PARTIAL = "partial"


@dataclass(frozen=True)
class Violation:
    rule: Rule
    message: str
    operations: tuple[Operation, ...] = ()

    def __str__(self) -> str:
        text = f"[{self.rule.value}] {self.message}"
        for op in self.operations:
            text += f"\n    {op.describe()}"
        return text


# -- the checker --------------------------------------------------------------------------------


def _by_sandbox(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
    found: dict[str, list[Operation]] = {}
    for op in ops:
        found.setdefault(op.sandbox, []).append(op)
    return found


def _spec_differences(op: Operation, seen: ObservedSandbox) -> list[str]:
    wrong = []
    if op.sandbox_id and seen.id != op.sandbox_id:
        wrong.append(f"id {seen.id!r}, acknowledged as {op.sandbox_id!r}")
    if dict(seen.labels) != dict(op.labels):
        wrong.append(f"labels {dict(seen.labels)}, created with {dict(op.labels)}")
    if dict(seen.environment) != dict(op.environment):
        wrong.append(f"environment {dict(seen.environment)}, created with {dict(op.environment)}")
    if op.image and seen.image != op.image:
        wrong.append(f"image {seen.image!r}, created with {op.image!r}")
    return wrong


def check(history: History) -> list[Violation]:
    """Every violation of P18 in ``history`` (empty: nothing acknowledged was lost)."""
    observation = history.observation
    if observation is None:
        raise HistoryError(
            f"the history of {history.scenario} has no observation after recovery",
            hint="the workload must observe the gateway before its history is checked",
        )
    violations: list[Violation] = []
    ops = _by_sandbox(history.operations)
    listed: dict[str, list[ObservedSandbox]] = {}
    for seen in observation.sandboxes:
        listed.setdefault(seen.name, []).append(seen)
    violations += _check_duplicates(observation)
    for name, mine in ops.items():
        violations += _check_sandbox(name, mine, listed.get(name, []), observation)
    for name, seen_list in listed.items():
        if name not in ops:
            violations.append(
                Violation(
                    Rule.UNEXPLAINED,
                    f"sandbox {name} ({seen_list[0].id}) is listed, and no operation of the "
                    "history created it",
                )
            )
    violations += _check_settled(observation)
    return violations


def _check_duplicates(observation: Observation) -> list[Violation]:
    found = []
    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    for seen in observation.sandboxes:
        ids[seen.id] = ids.get(seen.id, 0) + 1
        names[seen.name] = names.get(seen.name, 0) + 1
    for key, count in ids.items():
        if count > 1:
            found.append(Violation(Rule.DUPLICATE, f"id {key} is listed {count} times"))
    for key, count in names.items():
        if count > 1:
            found.append(Violation(Rule.DUPLICATE, f"name {key} is listed {count} times"))
    return found


def _check_sandbox(
    name: str, ops: Sequence[Operation], seen_list: Sequence[ObservedSandbox], obs: Observation
) -> list[Violation]:
    found: list[Violation] = []
    creates = [op for op in ops if op.kind is Kind.CREATE]
    acked = [op for op in creates if op.outcome is Outcome.OK]
    maybe = [op for op in creates if op.outcome is Outcome.UNKNOWN]
    refused = [op for op in creates if op.outcome is Outcome.FAIL]
    deletes = [op for op in ops if op.kind is Kind.DELETE]
    deleted = [op for op in deletes if op.outcome is Outcome.OK]
    maybe_deleted = [op for op in deletes if op.outcome is Outcome.UNKNOWN]
    seen = seen_list[0] if seen_list else None

    if seen is None:
        if acked and not deleted and not maybe_deleted:
            found.append(
                Violation(
                    Rule.CREATE_LOST,
                    f"sandbox {name} was created (acknowledged as {acked[0].sandbox_id}) and "
                    "is not listed; no delete of it was made",
                    (*acked, *deletes),
                )
            )
        return found

    if not acked and not maybe:
        why = "its create was refused" if refused else "no create of that name was made"
        found.append(
            Violation(Rule.UNEXPLAINED, f"sandbox {name} ({seen.id}) is listed; {why}", tuple(ops))
        )
        return found
    if deleted:
        last_create = max(op.invoked for op in creates)
        if any(op.invoked > last_create for op in deleted):
            found.append(
                Violation(
                    Rule.UNEXPLAINED,
                    f"sandbox {name} ({seen.id}) is listed after its delete was acknowledged",
                    (*creates, *deleted),
                )
            )
            return found
    for op in acked or maybe:
        wrong = _spec_differences(op, seen)
        if wrong:
            rule = Rule.CREATE_LOST if op.outcome is Outcome.OK else Rule.PARTIAL
            found.append(
                Violation(rule, f"sandbox {name} is listed with " + "; ".join(wrong), (op,))
            )
    found += _check_stopped(name, ops, seen)
    found += _check_appends(name, ops, obs)
    return found


def _check_stopped(name: str, ops: Sequence[Operation], seen: ObservedSandbox) -> list[Violation]:
    stops = [op for op in ops if op.kind is Kind.STOP and op.outcome is Outcome.OK]
    if not stops or seen.phase not in RUNNING_PHASES:
        return []
    last = max(stops, key=lambda op: op.completed)
    # A start that had not finished when the stop was invoked may have come after it.
    starts = [
        op
        for op in ops
        if op.kind in {Kind.START, Kind.CREATE}
        and op.outcome is not Outcome.FAIL
        and op.completed > last.invoked
    ]
    if starts:
        return []
    return [
        Violation(
            Rule.STOPPED_RUNNING,
            f"sandbox {name} was acknowledged as stopped and not started since, and is "
            f"{seen.phase}",
            (last,),
        )
    ]


def _check_appends(name: str, ops: Sequence[Operation], obs: Observation) -> list[Violation]:
    appends = [op for op in ops if op.kind is Kind.APPEND]
    found: list[Violation] = []
    for path in sorted({op.path for op in appends}):
        mine = [op for op in appends if op.path == path]
        acked = [op for op in mine if op.outcome is Outcome.OK]
        lines = obs.files.get(name, {}).get(path)
        if lines is None:
            if acked:
                why = obs.unreadable.get(name, "it was not read back")
                found.append(
                    Violation(
                        Rule.APPEND,
                        f"{path} of {name} holds {len(acked)} acknowledged appends and could "
                        f"not be read: {why}",
                        tuple(acked[:3]),
                    )
                )
            continue
        found += _check_file(name, path, mine, lines)
    return found


def _check_file(
    name: str, path: str, ops: Sequence[Operation], lines: Sequence[str]
) -> list[Violation]:
    found: list[Violation] = []
    by_line = {op.line: op for op in ops}
    where: dict[str, list[int]] = {}
    for number, line in enumerate(lines):
        where.setdefault(line, []).append(number)
        if line in by_line:
            continue
        half = [op for op in ops if line and op.line.startswith(line)]
        if half:
            found.append(
                Violation(
                    Rule.PARTIAL,
                    f"{path} of {name} line {number + 1} is {line!r}: part of an append",
                    tuple(half),
                )
            )
        else:
            found.append(
                Violation(
                    Rule.APPEND,
                    f"{path} of {name} line {number + 1} is {line!r}, which no append wrote",
                )
            )
    for op in ops:
        count = len(where.get(op.line, []))
        if op.outcome is Outcome.OK and count == 0:
            found.append(
                Violation(
                    Rule.APPEND, f"acknowledged append is missing from {path} of {name}", (op,)
                )
            )
        elif count > 1:
            found.append(
                Violation(Rule.APPEND, f"append is in {path} of {name} {count} times", (op,))
            )
        elif op.outcome is Outcome.FAIL and count:
            found.append(
                Violation(Rule.APPEND, f"refused append is nevertheless in {path} of {name}", (op,))
            )
    # Order: an acknowledged append that completed before another was invoked comes first.
    acked = sorted(
        (op for op in ops if op.outcome is Outcome.OK and len(where.get(op.line, [])) == 1),
        key=lambda op: op.invoked,
    )
    for earlier in acked:
        for later in acked:
            if earlier.completed < later.invoked and where[earlier.line][0] > where[later.line][0]:
                found.append(
                    Violation(
                        Rule.APPEND,
                        f"{path} of {name} has these acknowledged appends out of order",
                        (earlier, later),
                    )
                )
    return found


def _check_settled(obs: Observation) -> list[Violation]:
    found = []
    samples = [s for s in obs.samples if s.at >= obs.settled_from]
    names = sorted({name for s in samples for name in s.phases})
    for name in names:
        seen = [(s.at, s.phases[name]) for s in samples if name in s.phases]
        for (t0, p0), (t1, p1) in itertools.pairwise(seen):
            if p0 != p1:
                found.append(
                    Violation(
                        Rule.UNSETTLED,
                        f"sandbox {name} went from {p0} ({t0:.2f} s) to {p1} ({t1:.2f} s), "
                        f"after the settle window ended at {obs.settled_from:.2f} s",
                    )
                )
                break
    return found


# -- the file -------------------------------------------------------------------------------------


def dump(history: History, path: Path) -> None:
    """Write ``history`` as JSON lines: header, operations, events, observation, trailer."""
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "scenario": history.scenario,
        "seed": history.seed,
    }
    if history.transport:
        header["transport"] = history.transport
    rows: list[dict[str, Any]] = [header]
    rows += [{"op": op.to_json()} for op in history.operations]
    rows += [
        {"event": {"at": round(e.at, 4), "what": e.what, "until": e.until}} for e in history.events
    ]
    if history.observation is not None:
        rows.append({"observation": history.observation.to_json()})
    rows.append(
        {
            "end": True,
            "operations": len(history.operations),
            "events": len(history.events),
            "observation": history.observation is not None,
        }
    )
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    # The owner's only, like every artefact (it names sandboxes and what was written in them).
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def load(path: Path) -> History:
    """Read a history written by :func:`dump`.

    :raises HistoryError: the file is not a history, is of another version, or is truncated.
    """
    hint = "re-run the scenario with --openshell-workload to record a complete history"
    rows = _rows(path, hint)
    trailer = rows[-1]
    if trailer.get("end") is not True:
        raise HistoryError(f"history {path} is truncated: it has no end record", hint=hint)
    history = History(
        scenario=str(rows[0]["scenario"]),
        seed=int(rows[0]["seed"]),
        transport=str(rows[0].get("transport") or ""),
    )
    try:
        for row in rows[1:-1]:
            if "op" in row:
                history.operations.append(Operation.from_json(row["op"]))
            elif "event" in row:
                e = row["event"]
                history.events.append(Event(float(e["at"]), str(e["what"]), e.get("until")))
            elif "observation" in row:
                history.observation = Observation.from_json(row["observation"])
            else:
                raise HistoryError(f"history {path} has an unknown record: {row}", hint=hint)
    except (KeyError, ValueError, TypeError) as exc:
        raise HistoryError(f"history {path} has a malformed record: {exc}", hint=hint) from exc
    counts = (len(history.operations), len(history.events), history.observation is not None)
    if counts != (trailer.get("operations"), trailer.get("events"), trailer.get("observation")):
        raise HistoryError(
            f"history {path} is truncated: its end record counts {trailer}, the file holds "
            f"{counts[0]} operations, {counts[1]} events",
            hint=hint,
        )
    return history


def _rows(path: Path, hint: str) -> list[dict[str, Any]]:
    """The JSON records of ``path``, after its header is checked."""
    text = path.read_text()
    if not text.endswith("\n"):
        raise HistoryError(f"history {path} is truncated: its last line is incomplete", hint=hint)
    rows = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise HistoryError(
                f"history {path} line {number} is not JSON: {exc}", hint=hint
            ) from exc
    if not rows or not isinstance(rows[0], dict) or rows[0].get("format") != FORMAT:
        raise HistoryError(f"{path} is not an {FORMAT} file (no header)", hint=hint)
    version = rows[0].get("version")
    if version != VERSION:
        raise HistoryError(
            f"history {path} is version {version}; this checker reads version {VERSION} only",
            hint="check it with the pytest-openshell release that wrote it",
        )
    return rows
