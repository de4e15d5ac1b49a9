"""Where the time of a gateway recovery goes: the phases of ``gateway start`` after a kill, from
the host's side (``deploy()``'s own timings) and the gateway's (its log's timestamps).

Usage: python benchmarks/profile_recovery.py [--repeat N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import datetime

from _common import free_port, machine  # beside this script

from openshell_core.engine import PrivateEngine
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, engines_dir
from openshell_core.gateway import DeployOptions, deploy, destroy, names
from openshell_core.images import ensure_images

#: Lines of the gateway's log that mark the phases of its start (logged by openshell_core.server).
MARKS = {
    "store open": re.compile(r"store .* open at schema"),
    "gateway ready": re.compile(r"gateway .* ready \(node"),
}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def gateway_phases(lines: list[str], since: datetime) -> dict[str, float]:
    """Seconds from ``since`` (the container's start) to each marked log line of this start."""
    found: dict[str, float] = {}
    for line in lines:
        stamp = STAMP.match(line)
        if not stamp:
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if at < since:
            continue
        for name, pattern in MARKS.items():
            if name not in found and pattern.search(line):
                found[name] = (at - since).total_seconds()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    private = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir() / DEFAULT_ENGINE_NAME)
    phases: dict[str, list[float]] = {}
    with private.lease(), tempfile.TemporaryDirectory() as home:
        engine = private.connect()
        ensure_images(engine)
        env = {"XDG_CONFIG_HOME": home}
        name = f"profile-{int(time.time()) % 100000}"
        base = DeployOptions(name=name, port=free_port(), config_env=env, faults=frozenset())
        deploy(engine, base)
        try:
            for _ in range(args.repeat):
                engine.kill_container(names.container_name(name))
                started = time.monotonic()
                outcome = deploy(
                    engine, DeployOptions(name=name, config_env=env, faults=frozenset())
                )
                total = time.monotonic() - started
                doc = engine.inspect_container(names.container_name(name)) or {}
                started_at = datetime.strptime(
                    doc["State"]["StartedAt"][:26], "%Y-%m-%dT%H:%M:%S.%f"
                )
                logs = engine.container_logs(names.container_name(name), tail=200)
                inside = gateway_phases(logs, started_at)
                samples = {
                    "gateway start, total (host)": total,
                    "health wait, ended by the API answering (host)": outcome.timings["health"],
                    "API wait after that (host)": outcome.timings["api"],
                    **{f"in the container: {k}" : v for k, v in inside.items()},
                }  # fmt: skip
                for key, value in samples.items():
                    phases.setdefault(key, []).append(value)
        finally:
            destroy(engine, name, env=env)
            engine.close()
    print(f"machine: {machine()}")
    print(
        f"repeats: {args.repeat} (median seconds; in-container phases from the container's start)\n"
    )
    print("| phase of `gateway start` after `docker kill` | median s |\n|---|---|")
    for key, values in phases.items():
        print(f"| {key} | {statistics.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
