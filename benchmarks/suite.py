"""Suite wall time: the conformance suite serial and with ``-n 2 --dist loadgroup``, in one run.

Usage: python benchmarks/suite.py [--scenarios core|all|KEYS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import machine, run_process  # beside this script

ROOT = Path(__file__).parent.parent


def run_suite(scenarios: str, *extra: str) -> tuple[float, str]:
    command = [
        sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
        "--openshell-gateway", "--openshell-engine=private", f"--openshell-scenarios={scenarios}",
        *extra,
    ]  # fmt: skip
    elapsed, stdout = run_process(command, ROOT)
    return elapsed, stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="core")
    args = parser.parse_args()
    serial, serial_line = run_suite(args.scenarios)
    parallel, parallel_line = run_suite(args.scenarios, "-n", "2", "--dist", "loadgroup")
    ratio = parallel / serial
    print(f"machine: {machine()}\n")
    print(f"| conformance suite, scenarios `{args.scenarios}` | wall time (s) | result |")
    print("|---|---|---|")
    print(f"| serial | {serial:.1f} | {serial_line} |")
    print(f"| `-n 2 --dist loadgroup` | {parallel:.1f} | {parallel_line} |")
    verdict = "met" if ratio <= 0.65 else "missed"
    print(f"| scaling (parallel / serial; target <= 0.65) | {ratio:.2f} | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
