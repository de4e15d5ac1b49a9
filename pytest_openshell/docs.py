"""The generated parts of docs/conformance.md, made from the code so the page cannot drift.

``python -m pytest_openshell.docs [PAGE]`` rewrites every block between
``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->`` in PAGE (default
``docs/conformance.md``); ``--check`` only says whether the page is current (exit 1 when not).
The blocks: ``scenarios`` (each built-in scenario and its traits), ``checks`` (each conformance
test: the property it checks, the traits it asks for, the abilities it needs, the scenarios it
runs with) and ``counts`` (how many checks run with each scenario).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pytest_openshell.drivers import Ability
from pytest_openshell.scenarios import (
    BUILTIN,
    Applies,
    EngineScope,
    Scenario,
    applicable,
    on_docker,
)

PAGE = Path("docs/conformance.md")
SUITE = "pytest_openshell.conformance"
_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Check:
    """One conformance test, as its markers describe it."""

    module: str
    name: str
    property: int | None
    applies: Applies | None
    abilities: tuple[Ability, ...]
    #: whether it reads Docker objects (``openshell_docker``: skipped for a gateway elsewhere)
    docker: bool
    #: whether it runs once per scenario (it uses the ``lifecycle`` fixture)
    per_scenario: bool

    def scenarios(self, among: Iterable[Scenario]) -> list[Scenario]:
        if not self.per_scenario:
            return []
        return applicable(among, applies=self.applies)


def _marks(obj: object) -> list[Any]:
    found = getattr(obj, "pytestmark", [])
    found = found if isinstance(found, list) else [found]
    return [getattr(mark, "mark", mark) for mark in found]


def checks(package: str = SUITE) -> list[Check]:
    """Every test of the conformance suite, in module then source order."""
    suite = importlib.import_module(package)
    found: list[Check] = []
    for info in sorted(pkgutil.iter_modules(suite.__path__), key=lambda i: i.name):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        found.extend(_checks_of(module, info.name))
    return found


def _checks_of(module: ModuleType, name: str) -> Iterator[Check]:
    tests = [
        func
        for attr, func in vars(module).items()
        if attr.startswith("test_") and inspect.isfunction(func)
    ]
    tests.sort(key=lambda func: func.__code__.co_firstlineno)
    for func in tests:
        marks = {mark.name: mark for mark in [*_marks(module), *_marks(func)]}
        number = marks.get("openshell_property")
        traits = marks.get("openshell_traits")
        abilities = marks.get("openshell_abilities")
        yield Check(
            module=name,
            name=func.__name__,
            property=None if number is None else int(number.kwargs.get("number", 0)),
            applies=None if traits is None else Applies.of(*traits.args, **traits.kwargs),
            abilities=() if abilities is None else tuple(abilities.args),
            docker="openshell_docker" in marks,
            per_scenario="lifecycle" in inspect.signature(func).parameters,
        )


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def _code(values: Iterable[str]) -> str:
    return ", ".join(f"`{value}`" for value in values) or "-"


def scenarios_block(scenarios: Iterable[Scenario] = BUILTIN) -> str:
    rows = []
    for scenario in scenarios:
        traits = scenario.declared_traits
        sandboxes = traits.sandboxes.value
        if traits.some_sandboxes:
            some = "/".join(sorted(fate.value for fate in traits.some_sandboxes))
            sandboxes += f"; one each {some}"
        rows.append(
            [
                f"`{scenario.key}`",
                scenario.description,
                traits.gateway.value,
                sandboxes,
                traits.state.value,
                traits.held_session.value,
                "daemon" if traits.engine is EngineScope.DAEMON else "shared",
                _code(_needs(scenario)),
                "yes" if scenario.core else "",
            ]
        )
    header = ["key", "what happens", "gateway", "sandboxes", "state", "held session", "engine",
              "driver needs", "default"]  # fmt: skip
    return _table(header, rows)


def _needs(scenario: Scenario) -> list[str]:
    """What a scenario needs of the driver: its abilities, and ``docker`` when it acts on Docker
    objects (skipped with the reason for a gateway elsewhere)."""
    needs = sorted(a.value for a in scenario.declared_traits.abilities)
    return [*needs, "docker"] if scenario.precondition is on_docker else needs


def checks_block(found: Iterable[Check], scenarios: Iterable[Scenario] = BUILTIN) -> str:
    among = list(scenarios)
    rows = []
    for check in found:
        if check.per_scenario:
            applies = check.applies.describe() if check.applies else "every scenario"
            runs_with = _code(s.key for s in check.scenarios(among))
        else:
            applies, runs_with = "once, with no scenario", "-"
        rows.append(
            [
                str(check.property or "-"),
                f"`{check.module}::{check.name}`",
                applies,
                _code([*(a.value for a in check.abilities), *(["docker"] if check.docker else [])]),
                runs_with,
            ]
        )
    header = ["property", "test", "applies to", "driver needs", "built-in scenarios it runs with"]
    return _table(header, rows)


def counts_block(found: Iterable[Check], scenarios: Iterable[Scenario] = BUILTIN) -> str:
    found = list(found)
    rows = [
        [f"`{scenario.key}`", str(sum(scenario in c.scenarios([scenario]) for c in found))]
        for scenario in scenarios
    ]
    return _table(["scenario", "checks"], rows)


def kube_counts_block(found: Iterable[Check]) -> str:
    """Checks per scenario of the kubernetes target: those its traits select and that read no
    Docker objects (the others are skipped there, with the reason)."""
    elsewhere = [check for check in found if not check.docker]
    return counts_block(elsewhere, _kube_scenarios())


def _kube_scenarios() -> tuple[Scenario, ...]:
    from pytest_openshell.kube_driver import SCENARIOS  # noqa: PLC0415 (the kubernetes client)

    return SCENARIOS


def blocks() -> dict[str, Callable[[], str]]:
    found = checks()
    return {
        "scenarios": scenarios_block,
        "checks": lambda: checks_block(found),
        "counts": lambda: counts_block(found),
        "kube-scenarios": lambda: scenarios_block(_kube_scenarios()),
        "kube-counts": lambda: kube_counts_block(found),
    }


def render(text: str) -> str:
    """``text`` with every generated block made anew.

    :raises KeyError: a block names no generator.
    """
    makers = blocks()

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in makers:
            raise KeyError(f"no generator for block {name!r}; known: {', '.join(makers)}")
        return f"{match.group(1)}{makers[name]()}{match.group(4)}"

    return _BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_openshell.docs", description=__doc__)
    parser.add_argument("page", nargs="?", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    text = args.page.read_text()
    fresh = render(text)
    if args.check:
        if fresh != text:
            sys.stderr.write(
                f"{args.page} is out of date: run python -m pytest_openshell.docs {args.page}\n"
            )
            return 1
        return 0
    if fresh != text:
        args.page.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
