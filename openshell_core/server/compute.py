"""Compute drivers: where a sandbox runs. The Docker driver makes each sandbox a container on the
gateway's own engine, on the gateway's network, with its ``/sandbox`` on a named volume.

Docker objects of a sandbox (see ``docs/internals.md``): container ``openshell-sandbox-{id}``
(network alias the same), volume ``openshell-sandbox-{id}-workspace`` and, while it seeds the
volume, the init container ``openshell-sandbox-{id}-init``. Calls here block: the gateway runs
them in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import EngineError, NotFoundError
from openshell_core.sandbox import workspace

log = logging.getLogger("openshell.server.compute")

WORKSPACE_MOUNT: Final = workspace.IMAGE_DIR
SANDBOX_ROLE: Final = "sandbox"
INIT_ROLE: Final = "sandbox-init"
#: Seconds a sandbox container gets to stop before it is killed.
STOP_TIMEOUT: Final = 5
#: Seconds the workspace seeding may take.
SEED_TIMEOUT: Final = 300


def container_name(sandbox_id: str) -> str:
    return f"openshell-sandbox-{sandbox_id}"


def volume_name(sandbox_id: str) -> str:
    return f"openshell-sandbox-{sandbox_id}-workspace"


def init_container_name(sandbox_id: str) -> str:
    return f"openshell-sandbox-{sandbox_id}-init"


@dataclass(frozen=True)
class ContainerSpec:
    """What a sandbox container is made from; frozen into the container at creation."""

    sandbox_id: str
    image: str
    environment: Mapping[str, str]
    #: False only with the ``no-workspace-volume`` fault: ``/sandbox`` stays in the container.
    workspace_volume: bool = True
    #: True only with the ``reseed-workspace`` fault: seeding ignores the sentinel.
    reseed: bool = False


@dataclass(frozen=True)
class Observed:
    """A sandbox's compute objects as the engine reports them now.

    :param state: the container's state (``running``, ``exited``, ``created``, ...), or None
        when there is no container.
    """

    sandbox_id: str
    state: str | None
    workspace_volume: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    #: False when the container is not on the gateway's current network (it was taken off, or
    #: the network was re-created since): the gateway cannot reach it until it is attached again.
    attached: bool = True

    @property
    def running(self) -> bool:
        return self.state in {"running", "restarting"}


class ComputeDriver(Protocol):
    """What the gateway needs from a compute platform to run sandboxes."""

    def observe(self, sandbox_id: str) -> Observed:
        """The sandbox's container and workspace as they are now."""
        ...

    def list_owned(self, gateway_label: str | None = None) -> list[Observed]:
        """Sandbox containers labelled as this gateway's (or as ``gateway_label``'s)."""
        ...

    def provision(self, spec: ContainerSpec) -> None:
        """Make the workspace (once) and the container, and start it."""
        ...

    def start(self, sandbox_id: str) -> None:
        """Attach the container to the gateway's network when it is not, and start it."""
        ...

    def stop(self, sandbox_id: str) -> None: ...

    def remove(self, sandbox_id: str, *, workspace: bool) -> None:
        """Remove the container (and the workspace volume when ``workspace``)."""
        ...

    def address(self, sandbox_id: str) -> tuple[str, int]:
        """Where the sandbox's supervisor listens, seen from the gateway."""
        ...


@dataclass(frozen=True)
class Ownership:
    """How this gateway labels what it creates.

    :param gateway_label: the value of ``openshell.ai/gateway`` on sandbox objects.
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


class DockerComputeDriver:
    """Sandboxes as containers on the engine the gateway runs on."""

    def __init__(
        self, engine: Engine, *, network: str, ownership: Ownership, supervisor_port: int = 2222
    ) -> None:
        self._engine = engine
        self._network = network
        self._ownership = ownership
        self._port = supervisor_port

    def observe(self, sandbox_id: str) -> Observed:
        found = self._engine.inspect_container(container_name(sandbox_id))
        volume = self._engine.inspect_volume(volume_name(sandbox_id)) is not None
        if found is None:
            return Observed(sandbox_id, None, volume)
        state = str((found.get("State") or {}).get("Status") or "unknown")
        container_labels = dict((found.get("Config") or {}).get("Labels") or {})
        attached = _on_network(_network_id(found, self._network), self._network_id())
        return Observed(sandbox_id, state, volume, container_labels, attached)

    def list_owned(self, gateway_label: str | None = None) -> list[Observed]:
        owner = gateway_label or self._ownership.gateway_label
        found = self._engine.list_containers(
            label_filters=[
                f"{labels.MANAGED_BY}={labels.MANAGER}",
                f"{labels.GATEWAY}={owner}",
                f"{labels.ROLE}={SANDBOX_ROLE}",
            ]
        )
        volumes = {
            str(v.get("Name"))
            for v in self._engine.list_volumes(
                label_filters=[f"{labels.MANAGED_BY}={labels.MANAGER}"]
            )
        }
        network_id = self._network_id()
        observed = []
        for container in found:
            container_labels = dict(container.get("Labels") or {})
            sandbox_id = container_labels.get(labels.SANDBOX_ID, "")
            if not sandbox_id:
                continue
            observed.append(
                Observed(
                    sandbox_id,
                    str(container.get("State") or "unknown"),
                    volume_name(sandbox_id) in volumes,
                    container_labels,
                    _on_network(_network_id(container, self._network), network_id),
                )
            )
        return observed

    def provision(self, spec: ContainerSpec) -> None:
        binds: list[str] = []
        if spec.workspace_volume:
            self._ensure_volume(spec.sandbox_id)
            self._seed(spec)
            binds.append(f"{volume_name(spec.sandbox_id)}:{WORKSPACE_MOUNT}")
        name = container_name(spec.sandbox_id)
        if self._engine.inspect_container(name) is None:
            self._engine.create_container(
                name=name,
                image=spec.image,
                environment=spec.environment,
                labels=self._ownership.labels(spec.sandbox_id, SANDBOX_ROLE),
                network=self._network,
                network_aliases=[name],
                binds=binds,
                restart_policy="unless-stopped",
                init=True,
            )
            log.info("created container %s", name)
        self.start(spec.sandbox_id)

    def start(self, sandbox_id: str) -> None:
        name = container_name(sandbox_id)
        self._attach(name)
        self._engine.start_container(name)

    def stop(self, sandbox_id: str) -> None:
        self._engine.stop_container(container_name(sandbox_id), timeout=STOP_TIMEOUT)

    def remove(self, sandbox_id: str, *, workspace: bool) -> None:
        self._engine.remove_container(init_container_name(sandbox_id))
        self._engine.remove_container(container_name(sandbox_id))
        if workspace:
            self._engine.remove_volume(volume_name(sandbox_id))

    def address(self, sandbox_id: str) -> tuple[str, int]:
        return container_name(sandbox_id), self._port

    # -- network --

    def _network_id(self) -> str | None:
        found = self._engine.inspect_network(self._network)
        return None if found is None else str(found["Id"])

    def _attach(self, name: str) -> None:
        """Put the container on the gateway's current network, under its alias.

        A container keeps the id of each network it joined: taken off its network, or left with
        the id of a network that was removed and made again under the same name, it cannot be
        reached (or, stopped, cannot even start: ``network ... not found``).
        """
        found = self._engine.inspect_container(name)
        if found is None:
            raise NotFoundError("container", name)
        current = self._network_id()
        if current is None:
            raise EngineError(f"the gateway network {self._network} does not exist")
        recorded = _network_id(found, self._network)
        if _on_network(recorded, current):
            return
        if recorded is not None:
            log.info("detaching %s from a stale %s", name, self._network)
            with contextlib.suppress(EngineError):
                self._engine.disconnect_network(self._network, name)
        log.info("attaching %s to %s", name, self._network)
        self._engine.connect_network(self._network, name, aliases=[name])

    # -- workspace --

    def _ensure_volume(self, sandbox_id: str) -> None:
        name = volume_name(sandbox_id)
        if self._engine.inspect_volume(name) is None:
            self._engine.create_volume(
                name, labels=self._ownership.labels(sandbox_id, "sandbox-workspace")
            )
            log.info("created workspace volume %s", name)

    def _seed(self, spec: ContainerSpec) -> None:
        """Run the init step: copy the image's /sandbox into the volume unless already done."""
        name = init_container_name(spec.sandbox_id)
        self._engine.remove_container(name)
        self._engine.create_container(
            name=name,
            image=spec.image,
            entrypoint=workspace.seed_command(reseed=spec.reseed),
            labels=self._ownership.labels(spec.sandbox_id, INIT_ROLE),
            network=self._network,
            binds=[f"{volume_name(spec.sandbox_id)}:{workspace.INIT_MOUNT}"],
            init=False,
        )
        try:
            self._engine.start_container(name)
            code = self._engine.wait_container(name, timeout=SEED_TIMEOUT)
            if code != 0:
                tail = "; ".join(self._engine.container_logs(name, tail=5))
                raise EngineError(
                    f"seeding the workspace of {spec.sandbox_id} failed ({code}): {tail}"
                )
        finally:
            self._engine.remove_container(name)


def _network_id(container: Mapping[str, Any], network: str) -> str | None:
    """The id of ``network`` as ``container`` (inspect or list document) recorded it."""
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    entry = networks.get(network)
    if entry is None:
        return None
    return str(entry.get("NetworkID") or "")


def _on_network(recorded: str | None, current: str | None) -> bool:
    """True when a container's record of the network is the current network (an empty id is
    what a container that never ran records: it joins at its first start)."""
    return recorded is not None and current is not None and recorded in {"", current}
