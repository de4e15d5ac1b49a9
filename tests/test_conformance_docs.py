"""docs/conformance.md, the project's own statement of the contract, agrees with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from openshell_core.faults import Fault
from openshell_core.images import ImageSet
from pytest_openshell import docs
from pytest_openshell.scenarios import BUILTIN

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "conformance.md"


def test_the_committed_page_equals_the_generated_one() -> None:
    text = PAGE.read_text()
    assert docs.render(text) == text, (
        "docs/conformance.md is out of date: run python -m pytest_openshell.docs"
    )


def _miscount(text: str, key: str) -> str:
    """``text`` with the check count of scenario ``key`` in the generated table off by one."""
    row = re.compile(rf"\| `{re.escape(key)}` \| (\d+) \|")
    found = row.search(text)
    assert found, f"no check-count row for {key} on the page"
    return row.sub(f"| `{key}` | {int(found.group(1)) + 1} |", text, count=1)


def test_a_generated_block_that_drifted_from_the_code_is_rewritten() -> None:
    text = PAGE.read_text()
    drifted = _miscount(text, "kill")
    assert drifted != text
    assert docs.render(drifted) == text


def test_the_check_mode_fails_on_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "conformance.md"
    stale.write_text(_miscount(PAGE.read_text(), "destroy"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest_openshell.docs", "--check", str(stale)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "is out of date: run python -m pytest_openshell.docs" in result.stderr


def test_every_fault_is_on_the_page_with_its_upstream_report() -> None:
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `([a-z-]+)` \| .*$", PAGE.read_text(), flags=re.MULTILINE)
    }
    for fault in Fault:
        assert fault.value in rows, f"fault {fault.value} is not on docs/conformance.md"
        assert rows[fault.value].count("|") == 5, rows[fault.value]


def test_every_property_a_test_checks_is_described() -> None:
    text = PAGE.read_text()
    numbers = {check.property for check in docs.checks()}
    assert None not in numbers, "a conformance test has no openshell_property marker"
    for number in numbers:
        assert re.search(rf"^{number}\. \*\*", text, flags=re.MULTILINE), number


def test_nothing_points_at_the_teams_design_note() -> None:
    """Users of the installed package have docs/conformance.md, not the design note."""
    found = []
    paths = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for folder in ("pytest_openshell", "openshell_core", "conformance", "examples", "tests", "ci"):
        paths.extend(p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sh"})
    for path in paths:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "CONFORMANCE.md" in line:
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, found


def test_collect_only_counts_the_same_checks_per_scenario_as_the_page(
    pytester: pytest.Pytester, images: ImageSet
) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "pytest_openshell.conformance",
        "-p",
        "no:cacheprovider",
        "--openshell-engine=private",
        "--openshell-build=no",
        "--openshell-gateway",
        "--openshell-scenarios=all",
        "--collect-only",
        "-q",
    )
    assert result.ret == 0, result.stdout.str()
    printed = dict(
        re.findall(r"^openshell: scenario (\S+): (\d+) checks", result.stdout.str(), re.MULTILINE)
    )
    counts = PAGE.read_text().split("<!-- BEGIN GENERATED: counts -->")[1].split("<!-- END")[0]
    on_page = dict(re.findall(r"^\| `([a-z-]+)` \| (\d+) \|$", counts, re.MULTILINE))
    assert printed == on_page
    assert list(printed) == [scenario.key for scenario in BUILTIN]
