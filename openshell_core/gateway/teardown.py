"""Stop and destroy a gateway, and remove its objects: only ever objects with our labels."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import StateError
from openshell_core.gateway.names import (
    container_name,
    network_name,
    validate_name,
    volume_name,
)
from openshell_core.gateway.state import GatewayState, detect_state
from openshell_core.host.metadata import clear_active_gateway, gateway_lock, remove_gateway_files

log = logging.getLogger("openshell.gateway")


@dataclass(frozen=True)
class StopOutcome:
    """What :func:`stop` found and left; ``stopped`` says whether it stopped a container."""

    name: str
    state_before: GatewayState
    state_after: GatewayState
    stopped: bool


@dataclass(frozen=True)
class DestroyOutcome:
    """What :func:`destroy` removed (``"container openshell-cluster-x"``, ...)."""

    name: str
    state_before: GatewayState
    removed: tuple[str, ...]
    host_files_removed: bool
    active_cleared: bool


def stop(
    engine: Engine, name: str, *, timeout: int = 10, env: Mapping[str, str] | None = None
) -> StopOutcome:
    """Stop gateway ``name``'s container; volume, network and metadata stay.

    With ``unless-stopped``, a stopped gateway stays stopped across a daemon restart. A gateway
    with no running container is left as it is.
    """
    validate_name(name)
    with gateway_lock(name, env):
        facts = detect_state(engine, name)
        facts.refuse_foreign("stop")
        running = facts.container_exists and facts.container_status in ("running", "restarting")
        if running:
            log.info("Stopping gateway %s", name)
            engine.stop_container(container_name(name), timeout=timeout)
        else:
            log.info("Gateway %s is not running (%s)", name, facts.state.value)
        after = detect_state(engine, name)
    return StopOutcome(name, facts.state, after.state, stopped=running)


def destroy(engine: Engine, name: str, *, env: Mapping[str, str] | None = None) -> DestroyOutcome:
    """Remove gateway ``name`` for good: its container, its sandboxes, volume and network, and the
    host-side metadata; ``active_gateway`` is cleared when it named this gateway.

    Only objects with our labels are removed; an object with the gateway's names but not ours makes
    this refuse before anything is removed. Unlike upstream, the image is kept: images are shared
    and built offline, and nothing here would bring one back.
    """
    validate_name(name)
    with gateway_lock(name, env):
        facts = detect_state(engine, name)
        facts.refuse_foreign("destroy")
        log.info("Destroying gateway %s", name)
        removed = remove_gateway_objects(engine, name)
        files = remove_gateway_files(name, env)
        active = clear_active_gateway(name, env)
    return DestroyOutcome(name, facts.state, tuple(removed), files, active)


def remove_gateway_objects(engine: Engine, name: str) -> list[str]:
    """Remove every object of ours that belongs to gateway ``name``: the gateway container first
    (so it cannot re-create what goes next), its sandboxes, then networks, then volumes.

    :raises StateError: when the network still has containers that are not ours attached.
    """
    selector = [f"{labels.MANAGED_BY}={labels.MANAGER}", f"{labels.GATEWAY}={name}"]
    removed: list[str] = []
    if remove_container_if_ours(engine, container_name(name)):
        removed.append(f"container {container_name(name)}")
    for found in engine.list_containers(label_filters=selector):
        if labels.is_ours(found.get("Labels")):
            names = [str(n).lstrip("/") for n in found.get("Names") or []]
            if engine.remove_container(str(found["Id"])):
                removed.append(f"container {names[0] if names else found['Id']}")
    networks = {network_name(name)} | {
        str(n["Name"]) for n in engine.list_networks(label_filters=selector)
    }
    for network in sorted(networks):
        attached = attached_containers(engine, network)
        if attached:
            raise StateError(
                f"network {network!r} still has containers attached that are not this "
                f"gateway's: {', '.join(attached)}",
                hint=f"disconnect them (`docker network disconnect {network} <container>`) "
                "and run destroy again",
            )
        if remove_network_if_ours(engine, network):
            removed.append(f"network {network}")
    volumes = {volume_name(name)} | {
        str(v["Name"]) for v in engine.list_volumes(label_filters=selector)
    }
    for volume in sorted(volumes):
        if remove_volume_if_ours(engine, volume):
            removed.append(f"volume {volume}")
    return removed


# -- removal of our objects only --------------------------------------------------------------


def remove_container_if_ours(engine: Engine, container: str) -> bool:
    found = engine.inspect_container(container)
    if found is None or not labels.is_ours((found.get("Config") or {}).get("Labels")):
        return False
    return engine.remove_container(str(found["Id"]), force=True)


def remove_volume_if_ours(engine: Engine, volume: str) -> bool:
    found = engine.inspect_volume(volume)
    if found is None or not labels.is_ours(found.get("Labels")):
        return False
    return engine.remove_volume(volume)


def remove_network_if_ours(engine: Engine, network: str) -> bool:
    found = engine.inspect_network(network)
    if found is None or not labels.is_ours(found.get("Labels")):
        return False
    return engine.remove_network(str(found["Id"]))


def remove_network_if_unused(engine: Engine, network: str) -> bool:
    """Remove our network unless containers (sandboxes) are still on it: unlike upstream, a
    failed gateway start never pulls running sandboxes off their network."""
    attached = attached_containers(engine, network)
    if attached:
        log.info("Keeping network %s: %s still attached", network, ", ".join(attached))
        return False
    return remove_network_if_ours(engine, network)


def attached_containers(engine: Engine, network: str) -> list[str]:
    found = engine.inspect_network(network)
    if found is None:
        return []
    endpoints = found.get("Containers") or {}
    return sorted(str((info or {}).get("Name") or cid[:12]) for cid, info in endpoints.items())
