"""Failure artefacts: what the engine knew, captured before a destructive step can lose it.

A scenario calls :meth:`Artefacts.capture` before it disrupts a gateway (``docker rm -f`` takes the
container's log with it) and after recovery. Snapshots stay in memory; when the test fails they are
written under the artefacts directory and summarised in the report.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import OpenShellError

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
    started_at: float = field(default_factory=time.time)
    snapshots: list[Snapshot] = field(default_factory=list)

    def capture(self, label: str) -> Snapshot:
        """Record logs and ``docker inspect`` of the gateway's containers, volumes and network."""
        snapshot = Snapshot(label, time.time())
        try:
            selector = [f"{labels.MANAGED_BY}={labels.MANAGER}", f"{labels.GATEWAY}={self.gateway}"]
            for container in self.engine.list_containers(label_filters=selector):
                name = str(container["Names"][0]).lstrip("/")
                snapshot.logs[name] = self.engine.container_logs(name, tail=LOG_LINES)
                snapshot.inspect[f"container {name}"] = self.engine.inspect_container(name)
            for volume in self.engine.list_volumes(label_filters=selector):
                snapshot.inspect[f"volume {volume['Name']}"] = volume
            for network in self.engine.list_networks(label_filters=selector):
                snapshot.inspect[f"network {network['Name']}"] = network
        except OpenShellError as exc:  # the engine may be down mid-scenario: say so, go on
            snapshot.inspect["error"] = str(exc)
        self.snapshots.append(snapshot)
        return snapshot

    def write(self, directory: Path, nodeid: str) -> Path:
        """Write every snapshot plus the engine's events since the test began."""
        target = directory / _safe(nodeid)
        target.mkdir(parents=True, exist_ok=True)
        for index, snapshot in enumerate(self.snapshots):
            prefix = f"{index:02d}-{_safe(snapshot.label)}"
            for name, lines in snapshot.logs.items():
                (target / f"{prefix}-{name}.log").write_text("\n".join(lines) + "\n")
            (target / f"{prefix}-inspect.json").write_text(
                json.dumps(snapshot.inspect, indent=2, default=str) + "\n"
            )
        try:
            events = self.engine.events(since=self.started_at, until=time.time())
        except OpenShellError as exc:
            events = [{"error": str(exc)}]
        (target / "engine-events.json").write_text(json.dumps(events, indent=2) + "\n")
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


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:150]


#: Where a test's artefact collectors are kept, for the report hook to write them on failure.
ARTEFACTS_KEY = pytest.StashKey[list[Artefacts]]()
