"""Run leases and the sweep of what dead runs left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from openshell_core import labels, runs
from openshell_core.engine import Engine


def _objects_of_run(engine: Engine, image: str, run_id: str, stem: str) -> None:
    tag = labels.ownership(run_id=run_id, role="test")
    engine.create_network(stem, labels=tag)
    engine.create_volume(stem, labels=tag)
    engine.create_container(
        name=stem,
        image=image,
        command=["sleep", "600"],
        network=stem,
        labels=tag,
        binds=[f"{stem}:/data"],
    )
    engine.start_container(stem)


def _exists(engine: Engine, stem: str) -> tuple[bool, bool, bool]:
    return (
        engine.inspect_container(stem) is not None,
        engine.inspect_network(stem) is not None,
        engine.inspect_volume(stem) is not None,
    )


def test_a_live_lease_is_listed_and_disappears_when_released(tmp_path: Path) -> None:
    lease = runs.RunLease("abc123", tmp_path)
    with lease.held():
        assert runs.live_runs(tmp_path) == {"abc123"}
    assert runs.live_runs(tmp_path) == set()


def test_a_lease_of_a_dead_process_is_not_live(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "deadrun").write_text(dead.stdout)
    assert runs.live_runs(tmp_path) == set()


def test_a_stale_lease_is_not_live_even_if_its_pid_exists(tmp_path: Path) -> None:
    lease = tmp_path / "stale"
    lease.write_text(f"{os.getpid()}\n")
    old = time.time() - runs.STALE_AFTER - 5
    os.utime(lease, (old, old))
    assert runs.live_runs(tmp_path) == set()


def test_the_sweep_removes_dead_runs_objects_and_spares_live_runs_and_foreign_ones(
    engine: Engine, base_image: str, unique_name: str, tmp_path: Path
) -> None:
    dead, live = f"{unique_name}d", f"{unique_name}l"
    foreign = f"{unique_name}f"
    _objects_of_run(engine, base_image, "deadrun0001", dead)
    _objects_of_run(engine, base_image, "liverun0001", live)
    # Look-alike objects carrying a run label but not our manager label: never ours to touch.
    engine.create_network(foreign, labels={labels.RUN_ID: "deadrun0001"})
    engine.create_volume(foreign, labels={labels.RUN_ID: "deadrun0001"})
    engine.create_container(
        name=foreign,
        image=base_image,
        command=["sleep", "600"],
        network=foreign,
        labels={labels.RUN_ID: "deadrun0001"},
    )
    try:
        with runs.RunLease("liverun0001", tmp_path).held():
            # Run directories from a temporary directory of its own: the machine's would hold
            # other live runs' directories, whose leases are not in tmp_path.
            report = runs.sweep_dead_runs(engine, tmp_path, base=tmp_path)
        assert "deadrun0001" in report.runs
        assert _exists(engine, dead) == (False, False, False)
        assert _exists(engine, live) == (True, True, True)
        assert _exists(engine, foreign) == (True, True, True)
    finally:
        for stem in (dead, live, foreign):
            engine.remove_container(stem)
            engine.remove_network(stem)
            engine.remove_volume(stem)


def test_a_run_directory_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = runs.make_run_dir("0123456789ab", base=tmp_path)
    assert path == tmp_path / "pytest-openshell-0123456789ab"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_the_sweep_removes_dead_runs_directories_and_spares_live_runs_and_look_alikes(
    tmp_path: Path,
) -> None:
    leases, temp = tmp_path / "leases", tmp_path / "tmp"
    dead = runs.make_run_dir("deadbeef0001", base=temp)
    (dead / "ssh").mkdir()
    (dead / "ssh" / "id_ed25519").write_text("a private key")
    (leases / "deadbeef0001").parent.mkdir(parents=True)
    (leases / "deadbeef0001").write_text("999999999\n")  # the lease a killed run left
    live = runs.make_run_dir("cafe00000001", base=temp)
    current = runs.make_run_dir("cafe00000002", base=temp)
    look_alikes = [temp / "pytest-openshell-0123456789abcdef", temp / "pytest-openshell-notarun"]
    for path in look_alikes:
        path.mkdir()
    linked = temp / "pytest-openshell-deadbeef0002"
    linked.symlink_to(tmp_path)  # a link is never followed, nor removed
    with runs.RunLease("cafe00000001", leases).held():
        swept = runs.sweep_run_dirs(leases, current="cafe00000002", base=temp)
    assert swept == ["deadbeef0001"]
    assert not dead.exists()
    assert all(path.exists() for path in (live, current, *look_alikes, linked, tmp_path))


def test_the_sweep_spares_a_young_run_directory_that_has_no_lease_yet(tmp_path: Path) -> None:
    # A run that is starting may make its directory a moment before its lease is seen.
    leases, temp = tmp_path / "leases", tmp_path / "tmp"
    leases.mkdir()
    starting = runs.make_run_dir("5ea7ed000001", base=temp)
    assert runs.sweep_run_dirs(leases, base=temp) == []
    assert starting.exists()


def test_the_sweep_removes_an_unleased_run_directory_once_it_has_been_still_long_enough(
    tmp_path: Path,
) -> None:
    leases, temp = tmp_path / "leases", tmp_path / "tmp"
    leases.mkdir()
    abandoned = runs.make_run_dir("ab0000000001", base=temp)
    past = time.time() - runs.STALE_AFTER - 1
    os.utime(abandoned, (past, past))
    assert runs.sweep_run_dirs(leases, base=temp) == ["ab0000000001"]
    assert not abandoned.exists()
