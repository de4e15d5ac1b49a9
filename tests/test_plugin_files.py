"""What runs leave on the host, besides Docker objects: the run directory (the run's SSH key, its
gateways' mTLS client keys) goes with the run, or with the next run's sweep when the run was
killed; a run without the plugin makes none."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openshell_core import labels, runs
from openshell_core.engine import Engine
from openshell_core.images import ImageSet

pytest_plugins = ["pytester"]

FLAGS = ("-p", "no:cacheprovider", "--openshell-gateway", "--openshell-engine=private")


def _objects(engine: Engine, run_id: str) -> list[str]:
    selector = [f"{labels.RUN_ID}={run_id}"]
    return [
        *(str(c["Id"]) for c in engine.list_containers(label_filters=selector)),
        *(str(v["Name"]) for v in engine.list_volumes(label_filters=selector)),
    ]


def test_a_run_without_the_plugin_makes_no_run_directory(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert list(temp.glob(f"{runs.RUN_DIR_PREFIX}*")) == []


def test_a_killed_runs_directory_and_objects_go_with_the_next_runs_sweep(
    pytester: pytest.Pytester, engine: Engine, images: ImageSet, tmp_path: Path
) -> None:
    ready = tmp_path / "run-id"
    pytester.makepyfile(
        test_killed=f"""
        import pathlib, time

        def test_waits(openshell, openshell_fresh_gateway, openshell_sandbox_factory, openshell_ssh):
            openshell_sandbox_factory.create(openshell_fresh_gateway, "one")
            assert openshell_ssh.run(openshell_fresh_gateway, "one", "true").returncode == 0
            pathlib.Path({str(ready)!r}).write_text(openshell.run_id)
            time.sleep(600)
        """
    )
    killed = subprocess.Popen(
        [sys.executable, "-m", "pytest", *FLAGS, "test_killed.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() or not ready.read_text():
            assert killed.poll() is None, "the run ended before it made its gateway"
            assert time.monotonic() < deadline, "the run never made its gateway"
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(timeout=30)
    run_id = ready.read_text()
    directory = runs.run_dir(run_id)
    assert (directory / "ssh" / "id_ed25519").exists(), "the killed run left no key to sweep"
    assert _objects(engine, run_id), "the killed run left no objects to sweep"

    pytester.makepyfile(test_next="def test_anything(openshell): pass")
    result = pytester.runpytest_subprocess(*FLAGS, "test_next.py")
    result.assert_outcomes(passed=1)
    assert not directory.exists()
    assert _objects(engine, run_id) == []
