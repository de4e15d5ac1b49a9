"""Suite wall time: the conformance suite serial and with ``-n 2 --dist loadgroup``, in one run.

Usage: python benchmarks/suite.py [--scenarios all|core|KEYS]

Targets (issue 13): every scenario serially in at most 3 minutes; ``-n 2`` at most 0.55x serial.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import busy_fraction, cpu_ticks, machine, run_process  # beside this script

ROOT = Path(__file__).parent.parent
SCALING_TARGET = 0.55
SERIAL_TARGET = 180.0


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
    parser.add_argument("--scenarios", default="all")
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
    verdict = "met" if ratio <= SCALING_TARGET else "missed"
    print(
        f"| scaling (parallel / serial; target <= {SCALING_TARGET}) | {ratio:.2f} | | {verdict} |"
    )
    serial_verdict = "met" if serial <= SERIAL_TARGET else "missed"
    print(f"| serial target <= {SERIAL_TARGET:.0f} s | {serial:.1f} | | {serial_verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
