"""Failure artefacts: what the engine knew, captured before a destructive step can lose it.

A scenario calls :meth:`Artefacts.capture` before it disrupts a gateway (``docker rm -f`` takes the
container's log with it) and after recovery. Snapshots stay in memory; when the test fails they are
written under the artefacts directory and summarised in the report.

Secrets are redacted as they are captured (a sandbox's ``docker inspect`` holds its handshake
secret and SSH host key in its environment): see :mod:`openshell_core.redaction`. CI systems
upload the artefacts directory. Its files are the owner's only (0600, directories 0700): they
describe the user's system.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import OpenShellError
from openshell_core.redaction import Redactor

LOG_LINES = 200


@dataclass
class Snapshot:
    label: str
    taken_at: float
    logs: dict[str, list[str]] = field(default_factory=dict)
    inspect: dict[str, object] = field(default_factory=dict)


@dataclass
class Artefacts:
    """Snapshots of the objects of one gateway, for one test."""

    engine: Engine
    gateway: str
    #: shared with the rest of the run: it learns the secrets it meets, to mask them anywhere
    redactor: Redactor = field(default_factory=Redactor)
    started_at: float = field(default_factory=time.time)
    snapshots: list[Snapshot] = field(default_factory=list)

    def capture(self, label: str) -> Snapshot:
        """Record logs and ``docker inspect`` of the gateway's containers, volumes and network."""
        snapshot = Snapshot(label, time.time())
        try:
            selector = [f"{labels.MANAGED_BY}={labels.MANAGER}", f"{labels.GATEWAY}={self.gateway}"]
            for container in self.engine.list_containers(label_filters=selector):
                name = str(container["Names"][0]).lstrip("/")
                inspected = self.engine.inspect_container(name)
                if inspected is not None:
                    self.redactor.learn_container(inspected)  # before its logs are read
                logs = self.engine.container_logs(name, tail=LOG_LINES)
                snapshot.logs[name] = self.redactor.text("\n".join(logs)).split("\n")
                snapshot.inspect[f"container {name}"] = self.redactor.value(inspected)
            for volume in self.engine.list_volumes(label_filters=selector):
                snapshot.inspect[f"volume {volume['Name']}"] = self.redactor.value(volume)
            for network in self.engine.list_networks(label_filters=selector):
                snapshot.inspect[f"network {network['Name']}"] = self.redactor.value(network)
        except OpenShellError as exc:  # the engine may be down mid-scenario: say so, go on
            snapshot.inspect["error"] = self.redactor.text(str(exc))
        self.snapshots.append(snapshot)
        return snapshot

    def write(self, directory: Path, nodeid: str) -> Path:
        """Write every snapshot plus the engine's events since the test began."""
        target = directory / _safe(nodeid)
        private_directory(target)
        for index, snapshot in enumerate(self.snapshots):
            prefix = f"{index:02d}-{_safe(snapshot.label)}"
            for name, lines in snapshot.logs.items():
                # Values learned since this snapshot (a later sandbox's secret) are masked too.
                text = self.redactor.text("\n".join(lines) + "\n")
                write_private(target / f"{prefix}-{name}.log", text)
            inspected = self.redactor.value(snapshot.inspect)
            write_private(
                target / f"{prefix}-inspect.json",
                json.dumps(inspected, indent=2, default=str) + "\n",
            )
        try:
            events: list[object] = list(
                self.engine.events(since=self.started_at, until=time.time())
            )
        except OpenShellError as exc:
            events = [{"error": str(exc)}]
        write_private(
            target / "engine-events.json",
            json.dumps(self.redactor.value(events), indent=2, default=str) + "\n",
        )
        return target

    def summary(self, written: Path | None) -> str:
        lines = [f"gateway {self.gateway}: {len(self.snapshots)} snapshot(s)"]
        for snapshot in self.snapshots:
            for name, log_lines in snapshot.logs.items():
                tail = "\n".join(f"    {line}" for line in log_lines[-10:])
                lines.append(f"  [{snapshot.label}] last lines of {name}:\n{tail}")
        if written is not None:
            lines.append(f"  full artefacts: {written}")
        return "\n".join(lines)


def private_directory(path: Path) -> None:
    """Make ``path`` and its missing parents, each readable by the owner only (0700)."""
    missing = [parent for parent in (path, *path.parents) if not parent.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)  # mkdir's mode is filtered through the umask


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner only (0600), also when it existed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:150]


#: Where a test's artefact collectors are kept, for the report hook to write them on failure.
ARTEFACTS_KEY = pytest.StashKey[list[Artefacts]]()
