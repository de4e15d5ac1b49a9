"""The reference gateway's configuration, read once from its environment at start.

The environment contract is in ``docs/internals.md`` (the gateway container's ``env``). Two
variables exist for running the server outside its image (tests, development):
``OPENSHELL_STATE_DIR`` (default ``/var/lib/openshell``) and ``OPENSHELL_RUN_DIR`` (default
``/run/openshell``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openshell_core.errors import UsageError
from openshell_core.faults import Fault, parse_faults
from openshell_core.gateway.volume_record import IMAGE_ENV
from openshell_core.server.store import schema_for_variant

#: The port the gateway listens on inside its container (TLS: gRPC and SSH tunnels).
LISTEN_PORT: Final = 30051
#: The sandbox supervisor's port.
SANDBOX_SSH_PORT: Final = 2222
DEFAULT_SANDBOX_IMAGE: Final = "openshell-sandbox:v1"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the gateway needs to know about where it runs.

    :param node_name: the gateway's node identity, recorded on every sandbox it creates.
    :param node_name_source: ``"env"`` (``OPENSHELL_NODE_NAME``) or ``"hostname"``.
    """

    gateway_name: str
    node_name: str
    node_name_source: str
    network: str
    sandbox_image: str
    docker_host: str
    variant: str = "v1"
    extra_sans: tuple[str, ...] = ()
    gateway_port: int = LISTEN_PORT
    run_id: str | None = None
    #: the image this gateway runs (recorded on the volume; empty when the host did not say)
    image: str = ""
    faults: frozenset[Fault] = frozenset()
    state_dir: Path = Path("/var/lib/openshell")
    run_dir: Path = Path("/run/openshell")
    listen_host: str = "0.0.0.0"
    listen_port: int = LISTEN_PORT
    reconcile_interval: float = 2.0
    #: SSH session tokens live this long (seconds); 0 means forever.
    session_ttl: float = 86400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerConfig:
        """Read the configuration from ``env``; :class:`UsageError` names what is missing."""
        name = env.get("OPENSHELL_GATEWAY_NAME", "").strip()
        if not name:
            raise UsageError(
                "OPENSHELL_GATEWAY_NAME is not set",
                hint="the gateway container is made by `pytest-openshell gateway start`",
            )
        docker_host = env.get("DOCKER_HOST", "").strip()
        if not docker_host:
            raise UsageError(
                "DOCKER_HOST is not set",
                hint="mount the engine socket directory and point "
                "DOCKER_HOST at it (unix:///run/openshell-engine/docker.sock)",
            )
        faults = parse_faults(env.get("OPENSHELL_FAULTS", ""))
        node_name, source = _node_identity(env, faults)
        variant = env.get("OPENSHELL_GATEWAY_VARIANT", "v1").strip() or "v1"
        schema_for_variant(variant)  # refuse an unknown variant early
        port_text = env.get("OPENSHELL_GATEWAY_PORT", "").strip()
        try:
            gateway_port = int(port_text) if port_text else LISTEN_PORT
        except ValueError:
            raise UsageError(f"OPENSHELL_GATEWAY_PORT={port_text!r} is not a port") from None
        sans = tuple(s.strip() for s in env.get("OPENSHELL_EXTRA_SANS", "").split(",") if s.strip())
        return cls(
            gateway_name=name,
            node_name=node_name,
            node_name_source=source,
            network=env.get("OPENSHELL_NETWORK", "").strip() or f"openshell-cluster-{name}",
            sandbox_image=env.get("OPENSHELL_SANDBOX_IMAGE", "").strip() or DEFAULT_SANDBOX_IMAGE,
            docker_host=docker_host,
            variant=variant,
            extra_sans=sans,
            gateway_port=gateway_port,
            run_id=env.get("OPENSHELL_RUN_ID", "").strip() or None,
            image=env.get(IMAGE_ENV, "").strip(),
            faults=faults,
            state_dir=Path(env.get("OPENSHELL_STATE_DIR", "/var/lib/openshell")),
            run_dir=Path(env.get("OPENSHELL_RUN_DIR", "/run/openshell")),
        )

    def has(self, fault: Fault) -> bool:
        """True when ``fault`` is switched on (and can bite in this variant)."""
        if fault is Fault.RELABEL_ON_UPGRADE and self.variant == "v1":
            return False
        return fault in self.faults

    # -- where things are --

    @property
    def container_name(self) -> str:
        return f"openshell-cluster-{self.gateway_name}"

    @property
    def store_path(self) -> Path:
        if self.has(Fault.FORGET_SANDBOXES_ON_START):
            # The fault: the store is not on the volume, and a new start does not find it.
            return self.run_dir / "ephemeral-store" / "openshell.db"
        return self.state_dir / "openshell.db"

    @property
    def secret_path(self) -> Path:
        return self.state_dir / "secrets" / "ssh-handshake"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def grpc_socket(self) -> Path:
        return self.run_dir / "grpc.sock"

    @property
    def ready_marker(self) -> Path:
        return self.run_dir / "ready"

    @property
    def schema(self) -> int:
        return schema_for_variant(self.variant)

    @property
    def server_sans(self) -> tuple[str, ...]:
        """SANs the server certificate carries beyond the standard ones: its names on the
        gateway network and whatever the deploy asked for."""
        names = [self.container_name, self.node_name, *self.extra_sans]
        return tuple(dict.fromkeys(names))


def _node_identity(env: Mapping[str, str], faults: frozenset[Fault]) -> tuple[str, str]:
    """The node name: ``OPENSHELL_NODE_NAME``, or the container's hostname when it is missing.

    With the ``container-id-hostname`` fault the hostname wins even when the variable is set,
    which is how upstream's node identity followed the container id.
    """
    pinned = env.get("OPENSHELL_NODE_NAME", "").strip()
    if pinned and Fault.CONTAINER_ID_HOSTNAME not in faults:
        return pinned, "env"
    return socket.gethostname(), "hostname"
