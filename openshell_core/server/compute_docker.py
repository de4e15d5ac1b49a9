"""The Docker compute driver: each sandbox a container on the gateway's own engine, on the
gateway's network, with its ``/sandbox`` on a named volume. The only module of the gateway that
knows Docker.

Docker objects of a sandbox (see ``docs/internals.md``): container ``openshell-sandbox-{id}``
(network alias the same), volume ``openshell-sandbox-{id}-workspace`` and, while it seeds the
volume, the init container ``openshell-sandbox-{id}-init``. Settings, from the gateway's
environment: ``DOCKER_HOST`` (required: the engine) and ``OPENSHELL_NETWORK`` (default
``openshell-cluster-{gateway}``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from openshell_core import labels
from openshell_core.engine import Engine, connect
from openshell_core.errors import EngineError, NotFoundError, UsageError
from openshell_core.sandbox import workspace
from openshell_core.server.compute import (
    FAILURES_BEFORE_ERROR,
    Observation,
    Ownership,
    RuntimeState,
    SandboxSpec,
)
from openshell_core.wire import contract

log = logging.getLogger("openshell.server.compute")

NAME: Final = contract.DEFAULT_COMPUTE_DRIVER
#: Seconds a sandbox container gets to stop before it is killed.
STOP_TIMEOUT: Final = 5
#: Seconds the workspace seeding may take.
SEED_TIMEOUT: Final = 300
#: Container states in which the sandbox counts as running.
_RUNNING: Final = frozenset({"running", "restarting"})
#: Characters of a failing container's last output line kept in its failure.
_LAST_WORDS: Final = 200
#: Seconds one request for the engine's events lasts: how soon :meth:`DockerComputeDriver.watch`
#: notices that it is to stop.
WATCH_WINDOW: Final = 5
#: Seconds the watch waits before it asks an engine that did not answer again.
WATCH_RETRY: Final = 1.0
#: The container events after which the reconciler may find something else.
_RUNTIME_EVENTS: Final = frozenset({"start", "die", "destroy"})


def container_name(sandbox_id: str) -> str:
    return f"{contract.SANDBOX_OBJECT_PREFIX}{sandbox_id}"


def volume_name(sandbox_id: str) -> str:
    return f"{contract.SANDBOX_OBJECT_PREFIX}{sandbox_id}-workspace"


def init_container_name(sandbox_id: str) -> str:
    return f"{contract.SANDBOX_OBJECT_PREFIX}{sandbox_id}-init"


@dataclass(frozen=True)
class DockerSettings:
    """Where the engine is, and the network the gateway and its sandboxes share."""

    host: str
    network: str
    driver: str = NAME

    def open(self, ownership: Ownership) -> DockerComputeDriver:
        engine = connect(self.host, source=contract.DOCKER_HOST_ENV)
        return DockerComputeDriver(engine, network=self.network, ownership=ownership)


def settings_from_env(env: Mapping[str, str], *, gateway_name: str) -> DockerSettings:
    """:raises UsageError: ``DOCKER_HOST`` is not set."""
    host = env.get(contract.DOCKER_HOST_ENV, "").strip()
    if not host:
        raise UsageError(
            f"{contract.DOCKER_HOST_ENV} is not set",
            hint="mount the engine socket directory and point "
            f"{contract.DOCKER_HOST_ENV} at it "
            f"(unix://{contract.ENGINE_SOCKET_MOUNT}/docker.sock)",
        )
    network = env.get(contract.NETWORK_ENV, "").strip()
    return DockerSettings(host, network or f"{contract.GATEWAY_OBJECT_PREFIX}{gateway_name}")


def _state(status: str | None) -> RuntimeState:
    if status is None:
        return RuntimeState.ABSENT
    return RuntimeState.RUNNING if status in _RUNNING else RuntimeState.STOPPED


class DockerComputeDriver:
    """Sandboxes as containers on the engine the gateway runs on."""

    name = NAME

    def __init__(
        self,
        engine: Engine,
        *,
        network: str,
        ownership: Ownership,
        supervisor_port: int = contract.SUPERVISOR_PORT,
    ) -> None:
        self._engine = engine
        self._network = network
        self._ownership = ownership
        self._port = supervisor_port

    def observe(self, sandbox_id: str) -> Observation:
        found = self._engine.inspect_container(container_name(sandbox_id))
        volume = self._engine.inspect_volume(volume_name(sandbox_id)) is not None
        if found is None:
            return Observation(sandbox_id, RuntimeState.ABSENT, "missing", volume)
        status = str((found.get("State") or {}).get("Status") or "unknown")
        container_labels = dict((found.get("Config") or {}).get("Labels") or {})
        attached = _on_network(_network_id(found, self._network), self._network_id())
        return Observation(
            sandbox_id,
            _state(status),
            status,
            volume,
            container_labels,
            reachable=attached,
            failure=self._failure(found),
        )

    def _failure(self, found: Mapping[str, Any]) -> str:
        """Why the container keeps failing, or "": Docker's restart policy has restarted it
        :data:`FAILURES_BEFORE_ERROR` times (a count a manual start resets) and its last run
        ended with a non-zero code, and it is not running now."""
        state = found.get("State") or {}
        restarts = int(found.get("RestartCount") or 0)
        code = int(state.get("ExitCode") or 0)
        if state.get("Running") and not state.get("Restarting"):
            return ""
        if restarts < FAILURES_BEFORE_ERROR or code == 0:
            return ""
        name = str(found.get("Name") or "").lstrip("/")
        last = next(reversed(self._engine.container_logs(name, tail=1)), "").strip()
        said = f"; its last output: {last[:_LAST_WORDS]}" if last else ""
        return f"container {name} exited with code {code} after {restarts} restarts{said}"

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """``changed()`` at each start, end and removal of a sandbox container of this gateway,
        from the engine's event stream, asked for :data:`WATCH_WINDOW` seconds at a time; each
        window begins where the last one ended, so that no event falls between two."""
        label = f"{labels.GATEWAY}={self._ownership.gateway_label}"
        since = int(time.time())
        while not stop.is_set():
            until = since + WATCH_WINDOW
            try:
                for event in self._engine.watch_events(
                    since=since, until=until, label_filters=[label]
                ):
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    if (
                        event.get("Action") in _RUNTIME_EVENTS
                        and attributes.get(labels.ROLE) == contract.SANDBOX_ROLE
                    ):
                        changed()
            except EngineError as exc:
                log.info("watching the sandbox containers: %s", exc.message)
            now = int(time.time())
            if now < until:  # the stream ended early: the engine failed, or it is going down
                stop.wait(WATCH_RETRY)
            since = min(until, now)

    def list_owned(self, gateway_label: str | None = None) -> list[Observation]:
        owner = gateway_label or self._ownership.gateway_label
        found = self._engine.list_containers(
            label_filters=[
                f"{labels.MANAGED_BY}={labels.MANAGER}",
                f"{labels.GATEWAY}={owner}",
                f"{labels.ROLE}={contract.SANDBOX_ROLE}",
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
            status = str(container.get("State") or "unknown")
            if status == "restarting":  # between failed starts: the listing has no counts
                observed.append(self.observe(sandbox_id))
                continue
            observed.append(
                Observation(
                    sandbox_id,
                    _state(status),
                    status,
                    volume_name(sandbox_id) in volumes,
                    container_labels,
                    reachable=_on_network(_network_id(container, self._network), network_id),
                )
            )
        return observed

    def create(self, spec: SandboxSpec) -> None:
        binds: list[str] = []
        if spec.persistent_workspace:
            self._ensure_volume(spec.sandbox_id)
            self._seed(spec)
            binds.append(f"{volume_name(spec.sandbox_id)}:{contract.WORKSPACE_DIR}")
        name = container_name(spec.sandbox_id)
        if self._engine.inspect_container(name) is None:
            self._engine.create_container(
                name=name,
                image=spec.image,
                environment=spec.environment,
                labels=self._ownership.labels(spec.sandbox_id, contract.SANDBOX_ROLE),
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

    def adopt(self, sandbox_id: str) -> None:
        self._attach(container_name(sandbox_id))

    def stop(self, sandbox_id: str) -> None:
        self._engine.stop_container(container_name(sandbox_id), timeout=STOP_TIMEOUT)

    def delete(self, sandbox_id: str, *, workspace: bool) -> None:
        self._engine.remove_container(init_container_name(sandbox_id))
        self._engine.remove_container(container_name(sandbox_id))
        if workspace:
            self._engine.remove_volume(volume_name(sandbox_id))

    def endpoint(self, sandbox_id: str) -> tuple[str, int]:
        return container_name(sandbox_id), self._port

    def workspace_name(self, sandbox_id: str) -> str:
        return f"volume {volume_name(sandbox_id)}"

    def close(self) -> None:
        self._engine.close()

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
                name, labels=self._ownership.labels(sandbox_id, contract.WORKSPACE_ROLE)
            )
            log.info("created workspace volume %s", name)

    def _seed(self, spec: SandboxSpec) -> None:
        """Run the init step: copy the image's /sandbox into the volume unless already done."""
        name = init_container_name(spec.sandbox_id)
        self._engine.remove_container(name)
        self._engine.create_container(
            name=name,
            image=spec.image,
            entrypoint=workspace.seed_command(reseed=spec.reseed),
            labels=self._ownership.labels(spec.sandbox_id, contract.SANDBOX_INIT_ROLE),
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
