"""One command for every benchmark table: runs each script in turn and writes their tables, with
the machine they ran on, to ``benchmarks/results.md`` (and prints them).

Usage: python benchmarks/run.py [--repeat N] [--skip-cold] [--quick]
Run it on an otherwise idle machine, as root, after ``bash ci/setup.sh``; it uses the private
engine (started when needed) and stops nothing it did not start.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

from _common import machine  # beside this script

HERE = Path(__file__).parent


def table(script: str, *args: str) -> str:
    print(f"[bench] {script} {' '.join(args)}", file=sys.stderr)
    result = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # Keep whatever table it printed: one failed measurement must not hide the others.
        return (
            f"{result.stdout}\n\n`{script}` exited with {result.returncode}; the end of its "
            f"log:\n\n```\n{result.stderr[-3000:]}\n```\n"
        )
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold set-up and build")
    parser.add_argument("--quick", action="store_true", help="one repeat, no cold set-up")
    args = parser.parse_args()
    repeat = ["--repeat", "1" if args.quick else str(args.repeat)]
    cold = ["--skip-cold"] if args.skip_cold or args.quick else []
    sections = [
        ("Recovery latency per scenario, beside the floor", table("recovery.py", *repeat)),
        ("Plugin overhead", table("overhead.py", *repeat)),
        ("Suite wall time, serial and `-n 2`", table("suite.py")),
        ("Set-up cost", table("setup_cost.py", *cold)),
        ("Where the time of a recovery goes", table("profile_recovery.py", *repeat)),
        ("Foundation", table("foundation.py", *repeat, *cold)),
    ]
    today = datetime.date.today().isoformat()
    text = (
        f"# Benchmark results\n\nMeasured {today} on {machine()} by `python benchmarks/run.py`.\n"
    )
    for title, body in sections:
        text += f"\n## {title}\n\n{body.strip()}\n"
    (HERE / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
