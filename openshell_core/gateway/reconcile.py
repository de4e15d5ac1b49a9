"""Reconcilers: make one Docker object what the gateway needs, touching only what is ours.

Each ``ensure_*`` creates what is missing and leaves what exists (and is ours) alone; an object
with the gateway's name but without our labels is refused with a
:class:`~openshell_core.errors.StateError`, never modified.
"""

from __future__ import annotations

import errno
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import EngineError, NotFoundError, ReadinessTimeout, StateError
from openshell_core.faults import ENV_VAR as FAULTS_ENV
from openshell_core.faults import Fault, format_faults
from openshell_core.gateway.names import container_name, network_name, node_name, volume_name
from openshell_core.gateway.state import GATEWAY_PORT_KEY
from openshell_core.retry import poll_until
from openshell_core.state_record import (
    RECORD_FILE,
    STORE_FILE,
    StateRecord,
    store_schema_of,
)
from openshell_core.wire import contract

log = logging.getLogger("openshell.gateway")

#: Where the gateway keeps its whole state: the volume is mounted here.
STATE_DIR = contract.STATE_DIR
#: Where the engine's socket directory is mounted in the gateway container.
ENGINE_SOCKET_MOUNT = contract.ENGINE_SOCKET_MOUNT
RESTART_POLICY = "unless-stopped"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a new gateway container is created with."""

    name: str
    image: str
    hostname: str | None
    port: int
    network: str
    restart_policy: str
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[str, ...] = ()


def gateway_labels(name: str, run_id: str | None = None) -> dict[str, str]:
    """Ownership labels for gateway ``name``'s container, volume and network."""
    extra = {"gateway": name, "role": contract.GATEWAY_ROLE}
    if run_id:
        extra["run_id"] = run_id
    return labels.ownership(**extra)


def gateway_container_spec(
    engine: Engine,
    *,
    name: str,
    image: str,
    port: int,
    sandbox_image: str,
    gateway_host: str | None = None,
    run_id: str | None = None,
    faults: frozenset[Fault] = frozenset(),
    transport: str = contract.DEFAULT_TRANSPORT,
    sandbox_token_ttl: float | None = None,
    ssh_session_ttl: float | None = None,
) -> ContainerSpec:
    """The container of gateway ``name`` as ``docs/internals.md`` specifies it.

    Faults that live here: ``container-id-hostname`` (no hostname, no ``OPENSHELL_NODE_NAME``:
    Docker names the host after the container id) and ``no-restart-policy``.
    """
    node = node_name(name)
    pin_identity = Fault.CONTAINER_ID_HOSTNAME not in faults
    environment = {
        contract.GATEWAY_NAME_ENV: name,
        contract.NETWORK_ENV: network_name(name),
        contract.SANDBOX_IMAGE_ENV: sandbox_image,
        contract.GATEWAY_PORT_ENV: str(port),
        # recorded on the volume by the gateway, for a resume after this container is gone
        contract.GATEWAY_IMAGE_ENV: image,
        # the volume's transport (asked for at the first deploy; the gateway refuses another)
        contract.TRANSPORT_ENV: transport,
    }
    if sandbox_token_ttl is not None:
        environment[contract.SANDBOX_TOKEN_TTL_ENV] = f"{sandbox_token_ttl:g}"
    if ssh_session_ttl is not None:
        environment[contract.SSH_SESSION_TTL_ENV] = f"{ssh_session_ttl:g}"
    if pin_identity:
        environment[contract.NODE_NAME_ENV] = node
    sans = extra_sans(engine.host, gateway_host)
    if sans:
        environment[contract.EXTRA_SANS_ENV] = ",".join(sans)
    if run_id:
        environment[contract.RUN_ID_ENV] = run_id
    if faults:
        environment[FAULTS_ENV] = format_faults(faults)
    binds = [f"{volume_name(name)}:{STATE_DIR}"]
    socket_dir = engine.socket_dir
    if socket_dir is not None:
        socket_file = PurePosixPath(engine.host.removeprefix("unix://")).name
        binds.append(f"{socket_dir}:{ENGINE_SOCKET_MOUNT}")
        environment[contract.DOCKER_HOST_ENV] = f"unix://{ENGINE_SOCKET_MOUNT}/{socket_file}"
    else:
        environment[contract.DOCKER_HOST_ENV] = engine.host
    return ContainerSpec(
        name=container_name(name),
        image=image,
        hostname=node if pin_identity else None,
        port=port,
        network=network_name(name),
        restart_policy="no" if Fault.NO_RESTART_POLICY in faults else RESTART_POLICY,
        environment=environment,
        labels=gateway_labels(name, run_id),
        binds=tuple(binds),
    )


def extra_sans(engine_host: str, gateway_host: str | None) -> list[str]:
    """Names the server certificate needs beyond its defaults: a remote engine's host (from a
    ``tcp://`` address that is not loopback) and the ``--gateway-host`` users reach it by."""
    sans: list[str] = []
    if engine_host.startswith("tcp://"):
        host = urlparse(engine_host).hostname
        if host and host not in _LOOPBACK:
            sans.append(host)
    if gateway_host and gateway_host not in sans:
        sans.append(gateway_host)
    return sans


# -- network ----------------------------------------------------------------------------------


def ensure_network(engine: Engine, name: str, *, run_id: str | None = None) -> str:
    """Gateway ``name``'s network id, creating the network when it is missing.

    An existing network is kept as it is: unlike upstream, which removed and re-created it on every
    deploy, this never pulls a running container (or a sandbox) off its network.
    """
    network = network_name(name)
    found = engine.inspect_network(network)
    if found is not None:
        _require_ours("network", network, found.get("Labels"))
        return str(found["Id"])
    log.info("Creating network %s", network)
    try:
        return engine.create_network(network, labels=gateway_labels(name, run_id))
    except EngineError:
        # Another deploy may have created it between our look and our create (409).
        found = engine.inspect_network(network)
        if found is None:
            raise
        _require_ours("network", network, found.get("Labels"))
        return str(found["Id"])


def ensure_volume(engine: Engine, name: str, *, run_id: str | None = None) -> str:
    """Gateway ``name``'s volume, creating it when missing (an existing one is never changed)."""
    volume = volume_name(name)
    found = engine.inspect_volume(volume)
    if found is not None:
        _require_ours("volume", volume, found.get("Labels"))
        return volume
    log.info("Creating volume %s", volume)
    engine.create_volume(volume, labels=gateway_labels(name, run_id))
    found = engine.inspect_volume(volume)
    if found is None:  # pragma: no cover - removed in the same instant
        raise StateError(f"volume {volume!r} vanished right after it was created")
    _require_ours("volume", volume, found.get("Labels"))
    return volume


# -- container --------------------------------------------------------------------------------


def ensure_container(engine: Engine, spec: ContainerSpec) -> tuple[str, bool]:
    """The gateway container's id, and whether this call created it.

    An existing container of ours is returned as it is, whatever its image or configuration (a
    resume reuses it). A create that loses a race with a concurrent deploy (409) adopts the winner.
    Never pulls: a missing image is an :class:`~openshell_core.errors.ImageNotFoundError`.
    """
    found = engine.inspect_container(spec.name)
    if found is not None:
        _require_ours("container", spec.name, (found.get("Config") or {}).get("Labels"))
        return str(found["Id"]), False
    log.info("Creating container %s from %s", spec.name, spec.image)
    try:
        created = engine.create_container(
            name=spec.name,
            image=spec.image,
            hostname=spec.hostname,
            environment=spec.environment,
            labels=spec.labels,
            network=spec.network,
            ports={GATEWAY_PORT_KEY: ("127.0.0.1", spec.port)},
            binds=spec.binds,
            restart_policy=spec.restart_policy,
            init=True,
        )
    except EngineError:
        found = _created_by_someone_else(engine, spec.name)
        if found is None:
            raise
        _require_ours("container", spec.name, (found.get("Config") or {}).get("Labels"))
        log.info("Container %s was created by a concurrent deploy; using it", spec.name)
        return str(found["Id"]), False
    return created, True


def _created_by_someone_else(
    engine: Engine, container: str, *, patience: float = 5.0
) -> dict[str, Any] | None:
    """After a failed create: the container another deploy created under the same name, if any.

    Docker reserves the name before the winner's create finishes, so the loser's 409 can come
    while the container cannot be inspected yet: look again for a few seconds.
    """
    try:
        return poll_until(
            lambda: engine.inspect_container(container),
            lambda found: found is not None,
            timeout=patience,
            what=f"container {container}",
            schedule=(0.05, 2.0, 0.5),
        )
    except ReadinessTimeout:
        return None


def reconcile_container_network(engine: Engine, container: str, network: str) -> bool:
    """Attach a stopped container to the current ``network`` and nothing else; True if changed.

    A container records the id of each network it joined. When that network was removed and
    re-created (same name, new id), ``docker start`` fails with ``network <old id> not found``:
    upstream's stale-network bug. Detaching the stale attachment and attaching the current
    network fixes the record. A running container is never touched.

    :raises StateError: when the network does not exist.
    :raises EngineError: when the container cannot be attached.
    """
    found = engine.inspect_container(container)
    if found is None:
        raise NotFoundError("container", container)
    if (found.get("State") or {}).get("Running"):
        return False
    current = engine.inspect_network(network)
    if current is None:
        raise StateError(f"network {network!r} does not exist; cannot attach {container} to it")
    current_id = str(current["Id"])
    attached = _attachments(found)
    changed = False
    for key, recorded in attached.items():
        if key == network and (not recorded or recorded == current_id):
            continue
        reason = "another network" if key != network else f"stale network id {recorded[:12]}"
        log.info("Detaching %s from %s (%s)", container, key, reason)
        try:
            engine.disconnect_network(key, container)
        except EngineError as exc:
            log.debug("disconnect of %s from %s failed: %s", container, key, exc)
        changed = True
    refreshed = engine.inspect_container(container) or found
    remaining = _attachments(refreshed)
    if network not in remaining or (remaining[network] and remaining[network] != current_id):
        log.info("Attaching %s to network %s", container, network)
        engine.connect_network(network, container)
        changed = True
    return changed


def _attachments(container: Mapping[str, Any]) -> dict[str, str]:
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    return {key: str((value or {}).get("NetworkID") or "") for key, value in networks.items()}


# -- ports ------------------------------------------------------------------------------------


def check_port_free(engine: Engine, port: int, *, own_container: str) -> None:
    """Refuse a host port that a running container other than ``own_container`` publishes.

    :raises StateError: naming the container that holds the port.
    """
    for container in engine.list_containers(all=False):
        names = [str(n).lstrip("/") for n in container.get("Names") or []]
        if own_container in names:
            continue
        for binding in container.get("Ports") or []:
            if binding.get("PublicPort") == port:
                holder = names[0] if names else str(container.get("Id", "?"))[:12]
                raise StateError(
                    f"cannot start gateway: port {port} is held by container {holder!r}",
                    hint=f"stop it (`docker stop {holder}`) or choose another port with --port",
                )


def check_port_bindable(engine: Engine, name: str, port: int) -> None:
    """Refuse a host port that a process on this machine holds (a container's is named by
    :func:`check_port_free`), before anything is created: Docker would fail the container's
    start with a long error, after the container was made.

    Only for an engine on this machine (a Unix socket or a loopback address): a remote engine
    publishes on its own host. The probe binds as Docker's port proxy does (``SO_REUSEADDR``), so
    a connection in ``TIME_WAIT`` does not count as taken.

    :raises StateError: naming the port and the fix.
    """
    if not _engine_is_local(engine.host):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # e.g. a port below 1024 for a user that is not root: Docker's to judge
            raise StateError(
                f"cannot start gateway {name!r}: port {port} on 127.0.0.1 is in use by another "
                "process (not a container); nothing was created",
                hint=f"stop that process (`ss -ltnp 'sport = :{port}'` names it), or start the "
                f"gateway on another port: `pytest-openshell gateway start --name {name} "
                "--port N` (a resume keeps the gateway's state)",
            ) from None


def _engine_is_local(host: str) -> bool:
    if host.startswith("unix://"):
        return True
    if host.startswith("tcp://"):
        return (urlparse(host).hostname or "") in _LOOPBACK
    return False


# -- the record on the volume -----------------------------------------------------------------


def read_volume_record(
    engine: Engine, name: str, images: list[str | None], run_id: str | None = None
) -> StateRecord | None:
    """What gateway ``name``'s volume records about the image that last ran on it, read through a
    labelled helper container that is never started (of the first of ``images`` that is on the
    engine: creating a container needs an image, and nothing is pulled).

    Without ``gateway.json``, the store's schema version is read from its header (the image is
    then unknown). None when neither is there, or there is no image to read them with.
    """
    reader = next((ref for ref in images if ref and engine.inspect_image(ref)), None)
    if reader is None:
        return None
    helper = f"{container_name(name)}-reader-{uuid.uuid4().hex[:8]}"
    extra = {"gateway": name, "role": "reader"}
    if run_id:
        extra["run_id"] = run_id
    engine.create_container(
        name=helper,
        image=reader,
        command=["true"],
        network="none",
        binds=[f"{volume_name(name)}:{STATE_DIR}:ro"],
        labels=labels.ownership(**extra),
        init=False,
    )
    try:
        try:
            return StateRecord.parse(
                engine.read_container_file(helper, f"{STATE_DIR}/{RECORD_FILE}")
            )
        except NotFoundError:
            pass
        # No record (a volume from before gateways wrote one): the store's header still says
        # its schema version; which image wrote it is unknown.
        try:
            schema = store_schema_of(
                engine.read_container_file(helper, f"{STATE_DIR}/{STORE_FILE}")
            )
        except NotFoundError:
            return None
        return None if schema is None else StateRecord(image="", store_schema=schema)
    finally:
        engine.remove_container(helper)


# -- ownership --------------------------------------------------------------------------------


def _require_ours(kind: str, name: str, object_labels: Mapping[str, str] | None) -> None:
    if not labels.is_ours(object_labels):
        raise StateError(
            f"{kind} {name!r} exists but was not created by pytest-openshell "
            f"(no {labels.MANAGED_BY}={labels.MANAGER} label); it is left untouched",
            hint="remove it yourself if it is garbage, or choose another gateway name",
        )
