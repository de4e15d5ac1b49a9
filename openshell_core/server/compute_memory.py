"""An in-memory compute driver: sandboxes as records, for tests of the gateway's lifecycle rules.

It keeps what a real platform would (runtimes with their frozen spec and labels, workspaces with
their seeding count) and offers the disruptions tests need, in the protocol's words
(:meth:`InMemoryComputeDriver.vanish`, :meth:`~InMemoryComputeDriver.halt`,
:meth:`~InMemoryComputeDriver.crash_loop`, :meth:`~InMemoryComputeDriver.lose_workspace`,
:meth:`~InMemoryComputeDriver.cut_off`). Every
sandbox's supervisor is the one ``endpoint`` it was given (a local port the test serves).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final

from openshell_core import labels
from openshell_core.errors import NotFoundError
from openshell_core.server.compute import (
    ComputeDriver,
    Observation,
    Ownership,
    RuntimeState,
    SandboxSpec,
)
from openshell_core.wire import contract

NAME: Final = "memory"
#: What every in-memory image holds in its workspace directory (what seeding copies).
IMAGE_FILES: Final = frozenset({"README.md"})


@dataclass
class Runtime:
    """One sandbox's runtime as the in-memory platform holds it."""

    spec: SandboxSpec
    labels: dict[str, str]
    state: RuntimeState = RuntimeState.STOPPED
    detail: str = "created"
    reachable: bool = True
    starts: int = 0
    failure: str = ""


@dataclass
class Workspace:
    """A persistent workspace: its file names, and how often it was seeded."""

    files: set[str] = field(default_factory=set)
    seeded: int = 0
    #: The sentinel: set by the first seeding, never cleared.
    initialized: bool = False


@dataclass
class InMemoryComputeDriver:
    """A :class:`~openshell_core.server.compute.ComputeDriver` that holds sandboxes in memory."""

    ownership: Ownership
    supervisor: tuple[str, int] = ("127.0.0.1", contract.SUPERVISOR_PORT)
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    workspaces: dict[str, Workspace] = field(default_factory=dict)
    closed: bool = False
    name: str = NAME
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the protocol --

    def create(self, spec: SandboxSpec) -> None:
        with self._lock:
            if spec.persistent_workspace:
                found = self.workspaces.setdefault(spec.sandbox_id, Workspace())
                if spec.reseed or not found.initialized:
                    found.files |= IMAGE_FILES
                    found.seeded += 1
                    found.initialized = True
            if spec.sandbox_id not in self.runtimes:
                self.runtimes[spec.sandbox_id] = Runtime(
                    spec, self.ownership.labels(spec.sandbox_id, contract.SANDBOX_ROLE)
                )
            self._start(spec.sandbox_id)

    def start(self, sandbox_id: str) -> None:
        with self._lock:
            self._start(sandbox_id)

    def stop(self, sandbox_id: str) -> None:
        with self._lock:
            runtime = self._runtime(sandbox_id)
            runtime.state, runtime.detail = RuntimeState.STOPPED, "stopped"

    def delete(self, sandbox_id: str, *, workspace: bool) -> None:
        with self._lock:
            self.runtimes.pop(sandbox_id, None)
            if workspace:
                self.workspaces.pop(sandbox_id, None)

    def adopt(self, sandbox_id: str) -> None:
        with self._lock:
            self._runtime(sandbox_id).reachable = True

    def observe(self, sandbox_id: str) -> Observation:
        with self._lock:
            return self._observe(sandbox_id)

    def list_owned(self, gateway_label: str | None = None) -> list[Observation]:
        owner = gateway_label or self.ownership.gateway_label
        with self._lock:
            return [
                self._observe(sandbox_id)
                for sandbox_id, runtime in self.runtimes.items()
                if runtime.labels.get(labels.GATEWAY) == owner
            ]

    def endpoint(self, sandbox_id: str) -> tuple[str, int]:
        return self.supervisor

    def workspace_name(self, sandbox_id: str) -> str:
        return f"in-memory workspace {sandbox_id}"

    def close(self) -> None:
        self.closed = True

    # -- disruptions, for tests --

    def vanish(self, sandbox_id: str) -> None:
        """The runtime is gone (its workspace stays), as if removed behind the gateway's back."""
        with self._lock:
            del self.runtimes[sandbox_id]

    def halt(self, sandbox_id: str, detail: str = "exited") -> None:
        """The runtime stopped behind the gateway's back."""
        with self._lock:
            runtime = self._runtime(sandbox_id)
            runtime.state, runtime.detail = RuntimeState.STOPPED, detail

    def crash_loop(self, sandbox_id: str, failure: str = "exited with code 1") -> None:
        """The runtime fails at every start, and the platform keeps restarting it."""
        with self._lock:
            runtime = self._runtime(sandbox_id)
            runtime.state, runtime.detail, runtime.failure = (
                RuntimeState.RUNNING,
                "restarting",
                failure,
            )

    def lose_workspace(self, sandbox_id: str) -> None:
        with self._lock:
            del self.workspaces[sandbox_id]

    def cut_off(self, sandbox_id: str) -> None:
        """The runtime keeps running, but the gateway cannot reach it until it adopts it again."""
        with self._lock:
            self._runtime(sandbox_id).reachable = False

    def plant(self, sandbox_id: str, *, gateway_label: str, node_name: str) -> None:
        """A running runtime this driver did not make (another gateway's, or an older one's)."""
        spec = SandboxSpec(sandbox_id, sandbox_id, contract.DEFAULT_SANDBOX_IMAGE, {})
        owner = Ownership(gateway_label, node_name)
        with self._lock:
            self.runtimes[sandbox_id] = Runtime(
                spec,
                owner.labels(sandbox_id, contract.SANDBOX_ROLE),
                RuntimeState.RUNNING,
                "running",
            )

    # -- helpers --

    def _runtime(self, sandbox_id: str) -> Runtime:
        runtime = self.runtimes.get(sandbox_id)
        if runtime is None:
            raise NotFoundError("sandbox runtime", sandbox_id)
        return runtime

    def _start(self, sandbox_id: str) -> None:
        runtime = self._runtime(sandbox_id)
        runtime.reachable = True
        if runtime.state is not RuntimeState.RUNNING:
            runtime.state, runtime.detail = RuntimeState.RUNNING, "running"
            runtime.starts += 1

    def _observe(self, sandbox_id: str) -> Observation:
        workspace = sandbox_id in self.workspaces
        runtime = self.runtimes.get(sandbox_id)
        if runtime is None:
            return Observation(sandbox_id, RuntimeState.ABSENT, "missing", workspace)
        return Observation(
            sandbox_id,
            runtime.state,
            runtime.detail,
            workspace,
            dict(runtime.labels),
            reachable=runtime.reachable,
            failure=runtime.failure,
        )


@dataclass(frozen=True)
class InMemorySettings:
    """Settings for a :class:`ServerConfig` in tests: they hand out ``compute`` (labelling as the
    gateway says), or a new in-memory driver."""

    compute: InMemoryComputeDriver | None = None
    driver: str = NAME

    def open(self, ownership: Ownership) -> ComputeDriver:
        if self.compute is None:
            return InMemoryComputeDriver(ownership)
        self.compute.ownership = ownership
        return self.compute
