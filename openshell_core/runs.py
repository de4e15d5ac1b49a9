"""Test runs on an engine: who is alive, and sweeping what dead runs left behind.

Every Docker object a run creates carries :data:`labels.RUN_ID`. A live run holds a lease: a file
named after its id, with its pid, whose mtime it refreshes every few seconds. A sweep removes the
objects of every run whose lease is gone, whose process died, or whose lease went stale (a
run killed with ``kill -9``, or a crashed session on another machine). A run whose lease is fresh
is never swept. Only objects that carry our manager label are considered at all.

A run's host-side files (its gateways' mTLS files, its SSH key) live in its run directory,
``$TMPDIR/pytest-openshell-{run id}`` (0700), which the run removes at its end; the sweep removes
those of dead runs with their Docker objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from openshell_core import labels
from openshell_core.engine import Engine, _proc
from openshell_core.errors import EngineError

log = logging.getLogger("openshell.runs")

DEFAULT_RUNS_DIR = Path("/var/lib/pytest-openshell/runs")
#: A lease not refreshed for this long belongs to a dead run.
STALE_AFTER = 90.0
HEARTBEAT = 10.0


def runs_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("OPENSHELL_RUNS_DIR") or DEFAULT_RUNS_DIR)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


RUN_DIR_PREFIX = "pytest-openshell-"
_RUN_DIR = re.compile(re.escape(RUN_DIR_PREFIX) + r"(?P<run>[0-9a-f]{12})")


def run_dir(run_id: str, *, base: Path | None = None) -> Path:
    """Where run ``run_id`` keeps its host-side files (not made here)."""
    return (base or Path(tempfile.gettempdir())) / f"{RUN_DIR_PREFIX}{run_id}"


def make_run_dir(run_id: str, *, base: Path | None = None) -> Path:
    """Run ``run_id``'s directory, made readable by its owner only: it holds private keys."""
    path = run_dir(run_id, base=base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode passes through the umask
    return path


def remove_run_dir(run_id: str, *, base: Path | None = None) -> bool:
    """Remove run ``run_id``'s directory and everything in it; True when it was there."""
    path = run_dir(run_id, base=base)
    if not path.is_dir() or path.is_symlink():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def sweep_run_dirs(
    directory: Path, *, current: str | None = None, base: Path | None = None
) -> list[str]:
    """Remove the run directories of runs that are no longer alive (leases in ``directory``);
    only real directories of ours with a run directory's exact name are looked at.

    :returns: the run ids whose directories were removed.
    """
    base = base or Path(tempfile.gettempdir())
    try:
        found = [entry for entry in base.iterdir() if _RUN_DIR.fullmatch(entry.name)]
    except OSError:
        return []
    # Leases are read after the listing: a run makes its lease before its directory, so a
    # directory listed above whose run is alive has a lease by now.
    keep = live_runs(directory)
    if current:
        keep.add(current)
    # A directory with no lease at all may belong to a run that is starting (or to a process
    # that made it some other way): it is left alone until it has been still for as long as a
    # lease lives. A run that died leaves its lease behind, so its directory goes at once.
    leased = _lease_names(directory)
    now = time.time()
    swept = []
    for entry in found:
        run = _RUN_DIR.fullmatch(entry.name)["run"]  # type: ignore[index]
        try:
            status = entry.lstat()
        except FileNotFoundError:
            continue
        if run in keep or not entry.is_dir() or entry.is_symlink():
            continue
        if run not in leased and now - status.st_mtime < STALE_AFTER:
            continue
        if status.st_uid != os.getuid():
            continue  # another user's run: not ours to remove
        shutil.rmtree(entry, ignore_errors=True)
        swept.append(run)
    return swept


@dataclass
class RunLease:
    """The lease of one live run; refreshed by a daemon thread while held."""

    run_id: str
    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / self.run_id

    @contextlib.contextmanager
    def held(self) -> Iterator[RunLease]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{os.getpid()}\n")
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(HEARTBEAT):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        thread = threading.Thread(
            target=heartbeat, name=f"openshell-lease-{self.run_id}", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)
            self.path.unlink(missing_ok=True)


def _lease_names(directory: Path) -> set[str]:
    try:
        return {lease.name for lease in directory.iterdir()}
    except OSError:
        return set()


def live_runs(directory: Path, *, now: float | None = None) -> set[str]:
    """Run ids whose lease is fresh and whose process (when on this machine) is alive."""
    now = time.time() if now is None else now
    if not directory.is_dir():
        return set()
    alive = set()
    for lease in directory.iterdir():
        try:
            fresh = now - lease.stat().st_mtime < STALE_AFTER
        except FileNotFoundError:
            continue
        pid = _proc.read_pidfile(lease)
        if fresh and (pid is None or _proc.is_alive(pid)):
            alive.add(lease.name)
    return alive


@dataclass(frozen=True)
class SweepReport:
    runs: tuple[str, ...]
    containers: int
    networks: int
    volumes: int

    @property
    def total(self) -> int:
        return self.containers + self.networks + self.volumes


def remove_run_objects(
    engine: Engine, run_ids: Collection[str] | None = None, *, keep_runs: Collection[str] = ()
) -> SweepReport:
    """Remove containers, then networks, then volumes of the given runs (all runs but
    ``keep_runs`` when ``run_ids`` is None). Only objects labelled as ours are looked at."""
    ours = f"{labels.MANAGED_BY}={labels.MANAGER}"

    def selected(object_labels: Mapping[str, str] | None) -> str | None:
        run = (object_labels or {}).get(labels.RUN_ID)
        if not run or not labels.is_ours(object_labels) or run in keep_runs:
            return None
        if run_ids is not None and run not in run_ids:
            return None
        return run

    swept: set[str] = set()
    counts = {"containers": 0, "networks": 0, "volumes": 0}
    for container in engine.list_containers(label_filters=[ours, labels.RUN_ID]):
        run = selected(container.get("Labels"))
        if run and engine.remove_container(str(container["Id"])):
            swept.add(run)
            counts["containers"] += 1
    for network in engine.list_networks(label_filters=[ours, labels.RUN_ID]):
        run = selected(network.get("Labels"))
        if run:
            try:
                if engine.remove_network(str(network["Id"])):
                    swept.add(run)
                    counts["networks"] += 1
            except EngineError as exc:
                log.warning("could not remove network %s: %s", network.get("Name"), exc)
    for volume in engine.list_volumes(label_filters=[ours, labels.RUN_ID]):
        run = selected(volume.get("Labels"))
        if run:
            try:
                if engine.remove_volume(str(volume["Name"])):
                    swept.add(run)
                    counts["volumes"] += 1
            except EngineError as exc:
                log.warning("could not remove volume %s: %s", volume.get("Name"), exc)
    return SweepReport(tuple(sorted(swept)), **counts)


def sweep_dead_runs(
    engine: Engine, directory: Path, *, current: str | None = None, base: Path | None = None
) -> SweepReport:
    """Remove what runs that are no longer alive left on ``engine`` and on this machine (their
    run directories, under ``base``: default the temporary directory). ``directory`` and
    ``base`` go together: leases kept elsewhere would make every run directory look dead."""
    directories = sweep_run_dirs(directory, current=current, base=base)
    if directories:
        log.info("removed the run directories of dead runs %s", ", ".join(directories))
    keep = live_runs(directory)
    if current:
        keep.add(current)
    report = remove_run_objects(engine, None, keep_runs=keep)
    if report.total:
        log.info("swept %d objects left by dead runs %s", report.total, ", ".join(report.runs))
    return report
