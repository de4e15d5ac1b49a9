"""Compute drivers: where a sandbox runs, declared as a :class:`ComputeDriver` protocol.

The gateway's lifecycle rules (:mod:`.sandboxes`, :mod:`.reconciler`) speak only this module's
words: a sandbox has a *runtime* (what runs its supervisor) and a *workspace* (its persistent
``/sandbox``, seeded once from the image), both labelled with the owning gateway. Each platform's
words stay in its driver module. The gateway picks its driver by name from its configuration
(:data:`~openshell_core.wire.contract.COMPUTE_DRIVER_ENV`); :data:`DRIVERS` lists the names it
knows.
The in-memory driver (:mod:`.compute_memory`) is for tests of the lifecycle rules; the compliance
suite (``tests/test_compute_compliance.py``) holds every driver to this contract.

Driver calls block: the gateway runs them in worker threads.
"""

from __future__ import annotations

import enum
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from openshell_core import labels
from openshell_core.errors import UsageError
from openshell_core.wire import contract

#: The drivers a gateway can be configured with, and the module that holds each.
DRIVERS: Final = {
    contract.DEFAULT_COMPUTE_DRIVER: "openshell_core.server.compute_docker",
    contract.KUBERNETES_COMPUTE_DRIVER: "openshell_core.server.compute_kubernetes",
}
#: Failed starts in a row after which a runtime counts as failing, not as restarting: more than a
#: daemon restart or a crash causes (one each), few enough to say so within seconds.
FAILURES_BEFORE_ERROR: Final = 3


class RuntimeState(enum.StrEnum):
    """What a sandbox's runtime is doing, in the platform-neutral words of the lifecycle rules."""

    #: There is no runtime (never made, or it vanished): the gateway makes it again.
    ABSENT = "absent"
    RUNNING = "running"
    #: It exists and does not run (exited, never started, paused, dead, ...).
    STOPPED = "stopped"


@dataclass(frozen=True)
class Observation:
    """A sandbox's runtime and workspace as the platform reports them now.

    :param detail: the platform's own word for the runtime's state (for messages and logs).
    :param workspace: True when the sandbox's persistent workspace exists.
    :param reachable: False when the platform knows the gateway cannot reach the running
        sandbox until :meth:`ComputeDriver.adopt` re-establishes the way (never a restart).
    :param failure: non-empty when the runtime keeps failing (the platform restarted it
        :data:`FAILURES_BEFORE_ERROR` times and it failed again): why, in the platform's words.
    """

    sandbox_id: str
    state: RuntimeState
    detail: str
    workspace: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    reachable: bool = True
    failure: str = ""

    @property
    def running(self) -> bool:
        return self.state is RuntimeState.RUNNING


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is made from; frozen into its runtime when the runtime is made, and the same
    every time it has to be made again.

    :param environment: the supervisor's whole environment (secrets included: drivers must not
        log it).
    :param persistent_workspace: False only with the ``no-workspace-volume`` fault: the
        workspace is not kept apart from the runtime, and goes when the runtime goes.
    :param reseed: True only with the ``reseed-workspace`` fault: seeding ignores the sentinel.
    :param api_workspace: the API's workspace the sandbox belongs to (upstream's "sandbox
        workspace", a grouping of sandboxes; not its files). Drivers may use it in names.
    """

    sandbox_id: str
    name: str
    image: str
    environment: Mapping[str, str] = field(repr=False)
    persistent_workspace: bool = True
    reseed: bool = False
    api_workspace: str = "default"


@dataclass(frozen=True)
class Ownership:
    """How this gateway labels what it makes.

    :param gateway_label: the value of :data:`~openshell_core.wire.contract.GATEWAY_LABEL`.
    """

    gateway_label: str
    node_name: str
    run_id: str | None = None

    def labels(self, sandbox_id: str, role: str) -> dict[str, str]:
        extra = {
            "gateway": self.gateway_label,
            "sandbox_id": sandbox_id,
            "node_name": self.node_name,
            "role": role,
        }
        if self.run_id:
            extra["run_id"] = self.run_id
        return labels.ownership(**extra)


@runtime_checkable
class ComputeDriver(Protocol):
    """What the gateway needs from a platform to run sandboxes.

    Every call is idempotent where it can be; one naming a sandbox whose runtime is needed and
    absent raises :class:`~openshell_core.errors.NotFoundError`. Nothing is ever removed except by
    :meth:`delete`, and a workspace only when asked.
    """

    #: The driver's name in the gateway's configuration (also reported by ``GetGatewayInfo``).
    name: str

    def create(self, spec: SandboxSpec) -> None:
        """Make the workspace (seeded once) and the runtime when missing, and start it."""
        ...

    def start(self, sandbox_id: str) -> None:
        """Start the existing runtime (reachable again if it was not)."""
        ...

    def stop(self, sandbox_id: str) -> None:
        """Stop the runtime; its workspace and its frozen spec stay."""
        ...

    def delete(self, sandbox_id: str, *, workspace: bool) -> None:
        """Remove the runtime, and the workspace too when ``workspace``; missing parts are fine."""
        ...

    def adopt(self, sandbox_id: str) -> None:
        """Take over a running sandbox found on the platform: make it reachable from this gateway
        instance without restarting it."""
        ...

    def observe(self, sandbox_id: str) -> Observation:
        """The sandbox's runtime and workspace as they are now."""
        ...

    def list_owned(self, gateway_label: str | None = None) -> list[Observation]:
        """Every sandbox runtime labelled as this gateway's (or as ``gateway_label``'s)."""
        ...

    def endpoint(self, sandbox_id: str) -> tuple[str, int]:
        """Where the gateway dials the sandbox's supervisor (the transport in which the gateway
        dials in; one whose supervisor dials out to the gateway has no use for it)."""
        ...

    def workspace_name(self, sandbox_id: str) -> str:
        """The workspace as the platform's user would look for it (for messages)."""
        ...

    def close(self) -> None:
        """Let go of the platform (the sandboxes keep running)."""
        ...


@runtime_checkable
class WatchesRuntimes(Protocol):
    """An optional ability of a driver: it can say when one of the gateway's runtimes starts,
    ends or goes, so that the gateway acts on it at once rather than at its next periodic pass."""

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Call ``changed()`` at each such change, until ``stop`` is set (blocking; the driver
        may take a few seconds to notice ``stop``). A platform that stops answering is asked
        again after a pause: the watch outlives a restart of the platform."""
        ...


class ComputeSettings(Protocol):
    """A driver's own settings, read from the gateway's environment at start."""

    @property
    def driver(self) -> str: ...

    def open(self, ownership: Ownership) -> ComputeDriver:
        """Reach the platform and return the driver (blocking)."""
        ...


def settings_from_env(env: Mapping[str, str], *, gateway_name: str) -> ComputeSettings:
    """The configured driver's settings; :class:`UsageError` for an unknown driver name or
    settings the driver refuses."""
    name = env.get(contract.COMPUTE_DRIVER_ENV, "").strip() or contract.DEFAULT_COMPUTE_DRIVER
    module = DRIVERS.get(name)
    if module is None:
        raise UsageError(
            f"{contract.COMPUTE_DRIVER_ENV}={name!r} names no compute driver this gateway has",
            hint=f"set it to one of: {', '.join(sorted(DRIVERS))} (or leave it unset for "
            f"{contract.DEFAULT_COMPUTE_DRIVER})",
        )
    loaded = importlib.import_module(module)
    settings: ComputeSettings = loaded.settings_from_env(env, gateway_name=gateway_name)
    return settings
