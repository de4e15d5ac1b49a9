"""What Docker holds for a gateway: :func:`detect_state` and the facts behind the answer."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import StateError
from openshell_core.gateway.names import container_name, network_name, validate_name, volume_name
from openshell_core.wire import contract

#: The port the gateway listens on inside its container.
GATEWAY_PORT_KEY = f"{contract.GATEWAY_PORT}/tcp"


class GatewayState(enum.Enum):
    """A gateway's state, from its container and volume (the network does not change it)."""

    #: neither container nor volume
    NONE = "none"
    #: the container runs (or is restarting)
    RUNNING = "running"
    #: the container exists and does not run; the volume exists
    STOPPED = "stopped"
    #: only the volume: the next start creates a container on it
    VOLUME_ONLY = "volume-only"
    #: a container without its volume: reported, never papered over with an empty volume
    CONTAINER_ONLY = "container-only"


@dataclass(frozen=True)
class GatewayFacts:
    """The state of gateway ``name`` and what it was read from.

    :param networks: the networks the container records, by name, with the network id each
        recorded attachment points at (``""`` until the container starts on it).
    :param network_id: the id of the network named ``openshell-cluster-{name}`` now (None: absent).
    :param foreign: objects with the gateway's exact names that carry no ownership label; nothing
        here ever modifies them.
    """

    name: str
    state: GatewayState
    container_id: str | None = None
    container_status: str | None = None
    image: str | None = None
    image_id: str | None = None
    hostname: str | None = None
    restart_count: int = 0
    health: str | None = None
    exit_code: int | None = None
    host_port: int | None = None
    networks: dict[str, str] = field(default_factory=dict)
    #: the transport the container was made with (None: no container; a container made before
    #: transports existed speaks the default)
    transport: str | None = None
    volume_exists: bool = False
    network_id: str | None = None
    foreign: tuple[str, ...] = ()

    @property
    def container_exists(self) -> bool:
        return self.container_id is not None

    @property
    def recorded_network_id(self) -> str | None:
        """The network id the container recorded for the gateway network (None: not attached)."""
        return self.networks.get(network_name(self.name))

    @property
    def network_stale(self) -> bool:
        """True when the container would not start on the current network as it is recorded:
        an attachment to a network id that no longer exists, or to any other network."""
        if not self.container_exists:
            return False
        expected = network_name(self.name)
        for key, recorded in self.networks.items():
            if key != expected or (recorded and recorded != self.network_id):
                return True
        return expected not in self.networks

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (``gateway status --json``)."""
        record = asdict(self)
        record["state"] = self.state.value
        record["foreign"] = list(self.foreign)
        record["network_stale"] = self.network_stale
        return record

    def refuse_foreign(self, action: str) -> None:
        """Raise :class:`StateError` when an object with our names is not ours."""
        if not self.foreign:
            return
        objects = ", ".join(self.foreign)
        verb = "exists but was" if len(self.foreign) == 1 else "exist but were"
        raise StateError(
            f"cannot {action} gateway {self.name!r}: {objects} {verb} not created by "
            f"pytest-openshell (no {labels.MANAGED_BY}={labels.MANAGER} label); "
            "pytest-openshell never modifies or removes such objects",
            hint="it may belong to upstream's `openshell` CLI or another tool: remove it yourself "
            "if it is garbage, or choose another gateway name with --name",
        )


def detect_state(engine: Engine, name: str) -> GatewayFacts:
    """Read gateway ``name``'s container, volume and network; modify nothing.

    :raises UsageError: for a name that cannot name a gateway (before Docker is asked).
    """
    validate_name(name)
    container = engine.inspect_container(container_name(name))
    volume = engine.inspect_volume(volume_name(name))
    network = engine.inspect_network(network_name(name))
    foreign = []
    for kind, doc, object_labels in (
        ("container", container, _container_labels(container)),
        ("volume", volume, (volume or {}).get("Labels")),
        ("network", network, (network or {}).get("Labels")),
    ):
        if doc is not None and not labels.is_ours(object_labels):
            foreign.append(f"{kind} {container_name(name)!r}")
    facts: dict[str, Any] = {
        "name": name,
        "volume_exists": volume is not None,
        "network_id": str(network["Id"]) if network else None,
        "foreign": tuple(foreign),
    }
    if container is None:
        state = GatewayState.VOLUME_ONLY if volume is not None else GatewayState.NONE
        return GatewayFacts(state=state, **facts)
    status = container.get("State") or {}
    running = bool(status.get("Running"))
    if volume is None:
        state = GatewayState.CONTAINER_ONLY
    else:
        state = GatewayState.RUNNING if running else GatewayState.STOPPED
    health = (status.get("Health") or {}).get("Status")
    config = container.get("Config") or {}
    return GatewayFacts(
        state=state,
        container_id=str(container["Id"]),
        container_status=status.get("Status"),
        image=config.get("Image"),
        image_id=container.get("Image"),
        hostname=config.get("Hostname"),
        restart_count=int(container.get("RestartCount") or 0),
        health=str(health) if health else None,
        exit_code=None if running else status.get("ExitCode"),
        host_port=published_port(container),
        transport=_env(config, contract.TRANSPORT_ENV) or contract.DEFAULT_TRANSPORT,
        networks={
            key: str((value or {}).get("NetworkID") or "")
            for key, value in (
                (container.get("NetworkSettings") or {}).get("Networks") or {}
            ).items()
        },
        **facts,
    )


def published_port(container: dict[str, Any]) -> int | None:
    """The host port the container publishes the gateway port on (from its configuration)."""
    bindings = ((container.get("HostConfig") or {}).get("PortBindings") or {}).get(GATEWAY_PORT_KEY)
    for binding in bindings or []:
        port = str((binding or {}).get("HostPort") or "")
        if port.isdigit():
            return int(port)
    return None


def _env(config: dict[str, Any], key: str) -> str | None:
    for item in config.get("Env") or []:
        name, sep, value = str(item).partition("=")
        if sep and name == key:
            return value
    return None


def _container_labels(container: dict[str, Any] | None) -> dict[str, str] | None:
    if container is None:
        return None
    return (container.get("Config") or {}).get("Labels") or {}
