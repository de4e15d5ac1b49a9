"""Suite wall time: the conformance suite serial and with ``-n 2 --dist loadgroup``, in one run.

Usage: python benchmarks/suite.py [--scenarios core|all|KEYS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import busy_fraction, cpu_ticks, machine, run_process  # beside this script

ROOT = Path(__file__).parent.parent


def run_suite(scenarios: str, *extra: str) -> tuple[float, str, float]:
    command = [
        sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
        "--openshell-gateway", "--openshell-engine=private", f"--openshell-scenarios={scenarios}",
        *extra,
    ]  # fmt: skip
    before = cpu_ticks()
    elapsed, stdout = run_process(command, ROOT)
    return elapsed, stdout.strip().splitlines()[-1], busy_fraction(before, cpu_ticks())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="core")
    args = parser.parse_args()
    serial, serial_line, serial_busy = run_suite(args.scenarios)
    parallel, parallel_line, parallel_busy = run_suite(
        args.scenarios, "-n", "2", "--dist", "loadgroup"
    )
    ratio = parallel / serial
    print(f"machine: {machine()}\n")
    print(
        f"| conformance suite, scenarios `{args.scenarios}` | wall time (s) | every core busy | "
        "result |"
    )
    print("|---|---|---|---|")
    print(f"| serial | {serial:.1f} | {serial_busy:.0%} | {serial_line} |")
    print(f"| `-n 2 --dist loadgroup` | {parallel:.1f} | {parallel_busy:.0%} | {parallel_line} |")
    verdict = "met" if ratio <= 0.65 else "missed"
    print(f"| scaling (parallel / serial; target <= 0.65) | {ratio:.2f} | | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
