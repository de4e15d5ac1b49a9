"""Set-up cost, cold and warm, measured in one run on one machine.

- **cold**: nothing cached: a new virtualenv with this package and its dev extra installed without
  pip's cache, a new private engine under a throw-away root, and an empty image cache (debootstrap,
  the wheelhouse download, three image builds). Debian's packages are taken as installed (they are
  the machine's, not the project's, and ``ci/setup.sh`` only checks for them).
- **warm**: what the README's commands do when everything is in place: ``ci/setup.sh`` (it checks
  and installs nothing), the private engine started from stopped, and ``images build`` (nothing to
  do).

Usage: python benchmarks/setup_cost.py [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import machine  # beside this script

ROOT = Path(__file__).parent.parent


def sh(command: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def cold() -> list[tuple[str, float]]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="osbench-cold-", dir="/tmp"))
    venv = work / "venv"
    env = {
        "OPENSHELL_ENGINE_ROOT": str(work / "engines"),
        "OPENSHELL_CACHE_DIR": str(work / "cache"),
        "PIP_NO_CACHE_DIR": "1",
    }
    cli = str(venv / "bin" / "pytest-openshell")
    try:
        rows.append(("virtualenv", sh(["python3", "-m", "venv", str(venv)])))
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        rows.append(("pip install -e '.[dev]' (no pip cache)", sh([*pip, "-e", ".[dev]"], env=env)))
        rows.append(
            ("private engine start (new root)", sh([cli, "-q", "engine", "start"], env=env))
        )
        rows.append(("images build (empty cache)", sh([cli, "-q", "images", "build"], env=env)))
    finally:
        stop = [cli, "-q", "engine", "stop"]
        subprocess.run(stop, env={**os.environ, **env}, check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def warm() -> list[tuple[str, float]]:
    cli = str(ROOT / ".venv" / "bin" / "pytest-openshell")
    subprocess.run([cli, "-q", "engine", "stop"], check=False, capture_output=True)
    rows = [
        ("bash ci/setup.sh (everything installed)", sh(["bash", "ci/setup.sh"])),
        ("private engine start (stopped)", sh([cli, "-q", "engine", "start"])),
        ("images build (nothing to do)", sh([cli, "-q", "images", "build"])),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    results = {"warm": warm()}
    if not args.skip_cold:
        results["cold"] = cold()
    print(f"machine: {machine()}\n")
    print("| set-up | step | seconds |\n|---|---|---|")
    for kind in ("cold", "warm"):
        for step, seconds in results.get(kind, []):
            print(f"| {kind} | {step} | {seconds:.2f} |")
        if kind in results:
            total = sum(seconds for _, seconds in results[kind])
            target = (
                "" if kind == "cold" else f" (target < 10 s: {'met' if total < 10 else 'missed'})"
            )
            print(f"| {kind} | **total** | **{total:.2f}**{target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
