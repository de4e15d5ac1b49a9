"""Lock files that exist only while held: the generic lock, and the per-gateway lock on the real
engine (a refused operation, a holder that died)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from openshell_core import locks
from openshell_core.engine import Engine
from openshell_core.errors import StateError
from openshell_core.gateway import DeployOptions, container_name, deploy, destroy, stop
from openshell_core.host.metadata import gateway_lock, gateways_dir


def test_a_lock_file_exists_while_held_and_is_gone_after(tmp_path: Path) -> None:
    path = tmp_path / ".demo.lock"
    with locks.held(path):
        assert path.exists()
    assert not path.exists()


def test_a_lock_left_by_an_exception_is_gone_too(tmp_path: Path) -> None:
    path = tmp_path / ".demo.lock"
    with pytest.raises(RuntimeError), locks.held(path):
        raise RuntimeError("the operation failed")
    assert not path.exists()


def test_holders_never_overlap_although_each_removes_the_file_it_held(tmp_path: Path) -> None:
    path = tmp_path / ".demo.lock"
    inside, overlaps, rounds = [0], [], 200
    guard = threading.Lock()

    def work() -> None:
        for _ in range(rounds):
            with locks.held(path):
                with guard:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps.append(inside[0])
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []
    assert not path.exists()


def test_a_held_lock_is_never_removed_as_stale(tmp_path: Path) -> None:
    path = tmp_path / ".demo.lock"
    with locks.held(path):
        assert not locks.remove_if_unheld(path)
        assert path.exists()


def test_a_lock_file_nobody_holds_is_removed_as_stale(tmp_path: Path) -> None:
    path = tmp_path / ".demo.lock"
    path.touch()  # what a holder killed with SIGKILL leaves
    assert locks.remove_if_unheld(path)
    assert not path.exists()


HOLD_UNTIL_KILLED = """
import sys, time
from openshell_core.host.metadata import gateway_lock
with gateway_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_file_of_a_holder_that_died_is_removed_by_the_next_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_UNTIL_KILLED, "crashed"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert (gateways_dir() / ".crashed.lock").exists()
        with gateway_lock("another"):
            pass
        assert list(gateways_dir().iterdir()) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_operations_on_a_gateway_that_does_not_exist_leave_no_lock_file(
    engine: Engine, unique_name: str, tmp_path: Path
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    stop(engine, unique_name, env=env)
    destroy(engine, unique_name, env=env)
    assert list(gateways_dir(env).iterdir()) == []


def test_a_refused_gateway_start_leaves_no_lock_file(
    engine: Engine, base_image: str, unique_name: str, tmp_path: Path
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    squatter = container_name(unique_name)  # a container with the gateway's name, not ours
    engine.create_container(name=squatter, image=base_image, command=["true"])
    try:
        with pytest.raises(StateError):
            deploy(engine, DeployOptions(name=unique_name, config_env=env))
    finally:
        engine.remove_container(squatter)
    assert not any(path.name.endswith(".lock") for path in tmp_path.rglob("*"))
