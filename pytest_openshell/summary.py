"""The run summary: a scenario x property table in the terminal, and the same data as JSON.

Each conformance test reports its scenario key, property number and the scenario's timings as
``user_properties`` (``openshell.scenario``, ``openshell.property``,
``openshell.recovery_seconds``, ``openshell.downtime_seconds``). Those travel with the reports
from xdist workers to the controller and land in JUnit XML as properties, so one source feeds all
three outputs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_openshell.artefacts import private_directory, write_private

SCENARIO = "openshell.scenario"
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
    """Collects conformance outcomes from test reports."""

    cells: dict[tuple[str, int], Cell] = field(default_factory=lambda: defaultdict(Cell))
    recovery: dict[str, float] = field(default_factory=dict)
    downtime: dict[str, float] = field(default_factory=dict)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    timelines: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)

    def add(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        scenario = props.get(SCENARIO)
        if scenario is None:
            return
        number = props.get(PROPERTY, OTHER)  # a scenario test that names no property
        for key, sink in ((RECOVERY, self.recovery), (DOWNTIME, self.downtime)):
            if props.get(key) is not None:
                sink[str(scenario)] = float(props[key])  # type: ignore[arg-type]
        if props.get(SEED) is not None:
            self.seeds[str(scenario)] = int(props[SEED])  # type: ignore[call-overload]
        if props.get(TIMELINE) is not None:
            self.timelines[str(scenario)] = str(props[TIMELINE])
        if props.get(OPERATIONS) is not None:
            self.operations[str(scenario)] = int(props[OPERATIONS])  # type: ignore[call-overload]
        outcome: str = report.outcome
        if report.when != "call" and outcome == "passed":
            return  # setup/teardown passing says nothing; the call report decides
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        cell = self.cells[(str(scenario), int(number))]  # type: ignore[call-overload]
        if outcome == "skipped" and isinstance(report.longrepr, tuple):
            self.skip_reasons[str(scenario)] = str(report.longrepr[2])
        previous = cell.outcomes.get(report.nodeid)
        if previous is None or _RANK.get(outcome, 0) >= _RANK.get(previous, 0):
            cell.outcomes[report.nodeid] = outcome

    @property
    def empty(self) -> bool:
        return not self.cells

    def scenarios(self) -> list[str]:
        return sorted({scenario for scenario, _ in self.cells})

    def properties(self) -> list[int]:
        return sorted({number for _, number in self.cells})

    def as_json(self) -> dict[str, object]:
        return {
            "scenarios": {
                scenario: {
                    "recovery_seconds": self.recovery.get(scenario),
                    "downtime_seconds": self.downtime.get(scenario),
                    "skip_reason": self.skip_reasons.get(scenario),
                    "operations_checked": self.operations.get(scenario),
                    "timeline": self.timelines.get(scenario),
                    "seed": self.seeds.get(scenario),
                    "properties": {
                        _label(number): {
                            "outcome": self.cells[(scenario, number)].outcome,
                            "tests": self.cells[(scenario, number)].outcomes,
                        }
                        for number in self.properties()
                        if (scenario, number) in self.cells
                    },
                }
                for scenario in self.scenarios()
            }
        }

    def write_json(self, directory: Path) -> Path:
        private_directory(directory)
        target = directory / SUMMARY_FILE
        write_private(target, json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n")
        return target

    def table(self) -> list[str]:
        symbols = {"passed": "pass", "failed": "FAIL", "error": "ERR", "skipped": "skip", "": "-"}
        numbers = self.properties()
        header = ["scenario", *[_label(n, prefix="P") for n in numbers], "recovery s", "downtime s"]
        if self.operations:
            header.append("ops checked")
        rows = [header]
        for scenario in self.scenarios():
            row = [scenario]
            for number in numbers:
                cell = self.cells.get((scenario, number))
                row.append(symbols.get(cell.outcome if cell else "", "?"))
            for timings in (self.recovery, self.downtime):
                seconds = timings.get(scenario)
                row.append(f"{seconds:.1f}" if seconds is not None else "-")
            if self.operations:
                row.append(str(self.operations.get(scenario, "-")))
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)) for row in rows]
        skipped = [
            f"  {scenario}: skipped: {reason}"
            for scenario, reason in sorted(self.skip_reasons.items())
        ]
        timelines = [
            f"  {scenario}: timeline {path} (workload seed {self.seeds.get(scenario)}: "
            f"--openshell-seed {self.seeds.get(scenario)} repeats it)"
            for scenario, path in sorted(self.timelines.items())
        ]
        return [*lines, *skipped, *timelines]


def _label(number: int, *, prefix: str = "") -> str:
    return f"{prefix}{number}" if number != OTHER else "other"
