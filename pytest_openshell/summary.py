"""The run summary: a scenario x property table in the terminal (one per transport when the run
has several), and the same data as JSON.

Each conformance test reports its scenario key, transport, property number and the scenario's
timings as ``user_properties`` (``openshell.scenario``, ``openshell.transport``,
``openshell.property``, ``openshell.recovery_seconds``, ``openshell.downtime_seconds``). Those
travel with the reports from xdist workers to the controller and land in JUnit XML as properties,
so one source feeds all three outputs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core.wire.contract import DEFAULT_TRANSPORT
from pytest_openshell.artefacts import private_directory, write_private
from pytest_openshell.transports import scenario_id

SCENARIO = "openshell.scenario"
#: the transport of the test's gateways (``--openshell-transport``)
TRANSPORT = "openshell.transport"
PROPERTY = "openshell.property"
RECOVERY = "openshell.recovery_seconds"
DOWNTIME = "openshell.downtime_seconds"
#: operations of the --openshell-workload history checked after a scenario (property 18)
OPERATIONS = "openshell.operations_checked"
#: the scenario's timeline page (HTML, under the artefacts directory)
TIMELINE = "openshell.timeline"
#: the workload's seed (--openshell-seed repeats its choices and strike points)
SEED = "openshell.seed"
SUMMARY_FILE = "openshell-summary.json"
#: The column of scenario tests that name no property.
OTHER = 0

_RANK = {"failed": 3, "error": 3, "passed": 1, "skipped": 0}


@dataclass
class Cell:
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> outcome

    @property
    def outcome(self) -> str:
        if not self.outcomes:
            return ""
        return max(self.outcomes.values(), key=lambda outcome: _RANK.get(outcome, 0))


@dataclass
class RunSummary:
    """Collects conformance outcomes from test reports, per transport and scenario.

    ``transports`` are the run's (``--openshell-transport``): with one, the table is the
    scenario x property table of a one-transport run; with several, there is one table per
    transport, each headed by its counts. A report without ``openshell.transport`` belongs to the
    first.
    """

    transports: tuple[str, ...] = (DEFAULT_TRANSPORT,)
    #: (transport, scenario key, property number) -> outcomes
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=lambda: defaultdict(Cell))
    recovery: dict[tuple[str, str], float] = field(default_factory=dict)
    downtime: dict[tuple[str, str], float] = field(default_factory=dict)
    skip_reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    operations: dict[tuple[str, str], int] = field(default_factory=dict)
    timelines: dict[tuple[str, str], str] = field(default_factory=dict)
    seeds: dict[tuple[str, str], int] = field(default_factory=dict)
    #: transport -> nodeid -> outcome, of every test that names its transport
    tests: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        transport = str(props.get(TRANSPORT) or self.transports[0])
        scenario = props.get(SCENARIO)
        row = (transport, str(scenario))
        if scenario is not None:
            for key, sink in ((RECOVERY, self.recovery), (DOWNTIME, self.downtime)):
                if props.get(key) is not None:
                    sink[row] = float(props[key])  # type: ignore[arg-type]
            if props.get(SEED) is not None:
                self.seeds[row] = int(props[SEED])  # type: ignore[call-overload]
            if props.get(TIMELINE) is not None:
                self.timelines[row] = str(props[TIMELINE])
            if props.get(OPERATIONS) is not None:
                self.operations[row] = int(props[OPERATIONS])  # type: ignore[call-overload]
        outcome: str = report.outcome
        if report.when != "call" and outcome == "passed":
            return  # setup/teardown passing says nothing; the call report decides
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        if props.get(TRANSPORT) is not None:
            _keep_worst(self.tests[transport], report.nodeid, outcome)
        if scenario is None:
            return
        number = props.get(PROPERTY, OTHER)  # a scenario test that names no property
        cell = self.cells[(*row, int(number))]  # type: ignore[call-overload]
        if outcome == "skipped" and isinstance(report.longrepr, tuple):
            self.skip_reasons[row] = str(report.longrepr[2])
        _keep_worst(cell.outcomes, report.nodeid, outcome)

    @property
    def empty(self) -> bool:
        return not self.cells

    @property
    def several(self) -> bool:
        """Whether the run has several transports (a table per transport)."""
        return len(self.transports) > 1

    def rows(self) -> list[tuple[str, str]]:
        """(transport, scenario key) of every row, transport by transport in the run's order."""
        order = {transport: n for n, transport in enumerate(self.transports)}
        found = {(transport, scenario) for transport, scenario, _ in self.cells}
        return sorted(found, key=lambda row: (order.get(row[0], len(order)), row[0], row[1]))

    def scenarios(self) -> list[str]:
        return sorted({scenario for _, scenario, _ in self.cells})

    def properties(self) -> list[int]:
        return sorted({number for _, _, number in self.cells})

    def scenario_id(self, transport: str, scenario: str) -> str:
        """The row's name: the scenario key, with its transport when the run has several (as
        in the test ids)."""
        return scenario_id(scenario, transport, self.transports)

    def counts(self, transport: str) -> dict[str, int]:
        """How many tests of ``transport`` ended how (passed, failed, error, skipped)."""
        found = {name: 0 for name in ("passed", "failed", "error", "skipped")}
        for outcome in self.tests.get(transport, {}).values():
            found[outcome] = found.get(outcome, 0) + 1
        return found

    def as_json(self) -> dict[str, object]:
        """``scenarios`` by scenario id (the key; ``key-transport`` when the run has several
        transports), each with its ``scenario`` key and ``transport``; with several transports,
        ``transports`` has each one's test counts."""
        doc: dict[str, object] = {
            "scenarios": {
                self.scenario_id(*row): {
                    "scenario": row[1],
                    "transport": row[0],
                    "recovery_seconds": self.recovery.get(row),
                    "downtime_seconds": self.downtime.get(row),
                    "skip_reason": self.skip_reasons.get(row),
                    "operations_checked": self.operations.get(row),
                    "timeline": self.timelines.get(row),
                    "seed": self.seeds.get(row),
                    "properties": {
                        _label(number): {
                            "outcome": self.cells[(*row, number)].outcome,
                            "tests": self.cells[(*row, number)].outcomes,
                        }
                        for number in self.properties()
                        if (*row, number) in self.cells
                    },
                }
                for row in self.rows()
            }
        }
        if self.several:
            doc["transports"] = {transport: self.counts(transport) for transport in self.transports}
        return doc

    def write_json(self, directory: Path) -> Path:
        private_directory(directory)
        target = directory / SUMMARY_FILE
        write_private(target, json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n")
        return target

    def table(self) -> list[str]:
        """The scenario x property table; with several transports, one per transport, each
        headed by the transport and its counts."""
        if not self.several:
            return self._table(self.transports[0], [row for row in self.rows()])
        lines: list[str] = []
        for transport in self.transports:
            rows = [row for row in self.rows() if row[0] == transport]
            counts = self.counts(transport)
            said = ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no tests"
            if lines:
                lines.append("")
            lines.append(f"transport {transport}: {said}")
            lines.extend(self._table(transport, rows) if rows else ["  (no scenario ran)"])
        return lines

    def _all_skipped(self, row: tuple[str, str]) -> bool:
        outcomes = [cell.outcome for key, cell in self.cells.items() if key[:2] == row]
        return bool(outcomes) and all(outcome == "skipped" for outcome in outcomes)

    def _table(self, transport: str, rows: list[tuple[str, str]]) -> list[str]:
        symbols = {"passed": "pass", "failed": "FAIL", "error": "ERR", "skipped": "skip", "": "-"}
        numbers = self.properties()
        header = ["scenario", *[_label(n, prefix="P") for n in numbers], "recovery s", "downtime s"]
        if self.operations:
            header.append("ops checked")
        table = [header]
        for row in rows:
            line = [row[1]]
            for number in numbers:
                cell = self.cells.get((*row, number))
                line.append(symbols.get(cell.outcome if cell else "", "?"))
            for timings in (self.recovery, self.downtime):
                seconds = timings.get(row)
                line.append(f"{seconds:.1f}" if seconds is not None else "-")
            if self.operations:
                line.append(str(self.operations.get(row, "-")))
            table.append(line)
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        lines = [
            "  ".join(value.ljust(widths[i]) for i, value in enumerate(line)) for line in table
        ]
        mine = [row for row in self.rows() if row[0] == transport]
        # Only a scenario none of whose checks ran is said to be skipped (a check skipped beside
        # others that ran shows as "skip" in its column).
        skipped = [
            f"  {self.scenario_id(*row)}: skipped: "
            + self.skip_reasons[row].removeprefix("Skipped: ")
            for row in mine
            if row in self.skip_reasons and self._all_skipped(row)
        ]
        timelines = [
            f"  {self.scenario_id(*row)}: timeline {self.timelines[row]} (workload seed "
            f"{self.seeds.get(row)}: --openshell-seed {self.seeds.get(row)} repeats it)"
            for row in mine
            if row in self.timelines
        ]
        return [*lines, *skipped, *timelines]


def _keep_worst(outcomes: dict[str, str], nodeid: str, outcome: str) -> None:
    """Record ``outcome`` of ``nodeid`` unless a worse one is recorded (a failed teardown after a
    passed call is an error)."""
    previous = outcomes.get(nodeid)
    if previous is None or _RANK.get(outcome, 0) >= _RANK.get(previous, 0):
        outcomes[nodeid] = outcome


def _label(number: int, *, prefix: str = "") -> str:
    return f"{prefix}{number}" if number != OTHER else "other"
