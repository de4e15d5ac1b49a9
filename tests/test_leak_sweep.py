"""Leaks under interruption, measured: runs of the suite interrupted at random points (SIGINT of
pytest, SIGKILL of pytest, SIGKILL of one xdist worker), then one run to the end; afterwards no
container, volume or network with our labels is left, and objects that are not ours are untouched.

Slow (about half a minute per interrupted run): only with ``--run-slow``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from openshell_core.engine import Engine
from openshell_core.images import ImageSet
from openshell_core.retry import poll_until
from openshell_core.wire.contract import MANAGED_BY_LABEL

ROOT = Path(__file__).parent.parent
INTERRUPTIONS = 20
#: The run that is interrupted: one scenario, a gateway with sandboxes and a held session on it.
SUITE = [
    "conformance", "-p", "no:cacheprovider", "-q", "--openshell-gateway",
    "--openshell-engine=private", "--openshell-build=no", "--openshell-scenarios=stop-start",
    "-k", "every_sandbox_is_listed or health_api",
]  # fmt: skip
HOW = ("sigint", "sigkill", "worker")
FOREIGN = {"org.example.owner": "leak-sweep"}


def _ours(engine: Engine) -> list[str]:
    """Every container, volume and network with our ownership label (images aside: the built
    images are kept on purpose)."""
    wanted = [MANAGED_BY_LABEL]
    found = [f"container {c['Names'][0]}" for c in engine.list_containers(label_filters=wanted)]
    found += [f"volume {v['Name']}" for v in engine.list_volumes(label_filters=wanted)]
    found += [f"network {n['Name']}" for n in engine.list_networks(label_filters=wanted)]
    return sorted(found)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def _interrupted_run(rng: random.Random, how: str, work: Path) -> str:
    """Start a run, interrupt it ``how`` at a random point; what was done."""
    args = [*SUITE, *(["-n", "2", "--dist", "loadgroup"] if how == "worker" else [])]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    with (work / f"{how}.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    after = rng.uniform(1.0, 14.0)  # a run of SUITE lasts about 15-25 s
    try:
        process.wait(timeout=after)
        return f"{how}: finished before {after:.1f} s"
    except subprocess.TimeoutExpired:
        pass
    if how == "worker":
        workers = poll_until(
            lambda: _children(process.pid),
            bool,
            timeout=30,
            what="an xdist worker",
            fail_fast=lambda: None if process.poll() is None else "pytest exited",
        )
        os.kill(rng.choice(workers), signal.SIGKILL)
    else:
        process.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()  # a run that ignores SIGINT this long is itself a finding; end it
        process.wait()
        return f"{how} at {after:.1f} s: did not end within 180 s, killed"
    return f"{how} at {after:.1f} s: exit {process.returncode}"


@pytest.mark.slow
def test_interrupted_runs_leave_no_object_of_ours_and_touch_no_foreign_one(
    engine: Engine, images: ImageSet, tmp_path: Path
) -> None:
    seed = int(os.environ.get("LEAK_SWEEP_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    network = engine.create_network("leak-sweep-foreign", labels=FOREIGN)
    engine.create_volume("leak-sweep-foreign", labels=FOREIGN)
    container = engine.create_container(
        name="leak-sweep-foreign", image=images.sandbox, labels=FOREIGN,
        network="leak-sweep-foreign", binds=["leak-sweep-foreign:/data"],
    )  # fmt: skip
    try:
        before = _ours(engine)
        done = [_interrupted_run(rng, HOW[i % len(HOW)], tmp_path) for i in range(INTERRUPTIONS)]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
        final = subprocess.run(
            [sys.executable, "-m", "pytest", *SUITE], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=900, check=False,
        )  # fmt: skip
        left = sorted(set(_ours(engine)) - set(before))
        report = "\n".join(done)
        print(f"leak sweep (seed {seed}): {len(left)} objects of ours left\n{report}")
        assert final.returncode == 0, final.stdout[-3000:]
        assert left == [], (
            f"seed {seed}: left after {INTERRUPTIONS} interruptions:\n{left}\n{report}"
        )
        assert engine.inspect_container("leak-sweep-foreign") is not None
        assert engine.inspect_volume("leak-sweep-foreign") is not None
        assert engine.inspect_network("leak-sweep-foreign") is not None
    finally:
        engine.remove_container(container, force=True)
        engine.remove_volume("leak-sweep-foreign")
        engine.remove_network(network)
