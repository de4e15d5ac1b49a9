"""The reference gateway's configuration, read once from its environment at start.

The environment contract is in ``docs/internals.md`` (the gateway's ``env``; the names are
:mod:`openshell_core.wire.contract`'s). The compute driver reads its own settings
(:func:`~openshell_core.server.compute.settings_from_env`). Two variables exist for running the
server outside its image (tests, development): :data:`~openshell_core.wire.contract.STATE_DIR_ENV`
and
:data:`~openshell_core.wire.contract.RUN_DIR_ENV`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openshell_core.errors import StateError, UsageError
from openshell_core.faults import Fault, parse_faults
from openshell_core.server.compute import ComputeSettings, settings_from_env
from openshell_core.server.store import schema_for_variant
from openshell_core.wire import contract

#: The port the gateway listens on (TLS: gRPC and SSH tunnels).
LISTEN_PORT: Final = contract.GATEWAY_PORT


@dataclass(frozen=True)
class ServerConfig:
    """Everything the gateway needs to know about where it runs.

    :param node_name: the gateway's node identity, recorded on every sandbox it creates.
    :param node_name_source: ``"env"`` (``OPENSHELL_NODE_NAME``) or ``"hostname"``.
    """

    gateway_name: str
    node_name: str
    node_name_source: str
    sandbox_image: str
    #: The compute driver's settings (which driver, and what it needs to reach its platform).
    compute: ComputeSettings
    variant: str = "v1"
    extra_sans: tuple[str, ...] = ()
    gateway_port: int = LISTEN_PORT
    run_id: str | None = None
    #: the image this gateway runs (kept in its state directory; empty when the host said none)
    image: str = ""
    faults: frozenset[Fault] = frozenset()
    state_dir: Path = Path(contract.STATE_DIR)
    run_dir: Path = Path(contract.RUN_DIR)
    listen_host: str = "0.0.0.0"
    listen_port: int = LISTEN_PORT
    reconcile_interval: float = 2.0
    #: SSH session tokens live this long (seconds); 0 means forever.
    session_ttl: float = 86400.0
    #: the transport the deploy asked for (None: whatever the state records, else the default);
    #: the one the gateway speaks is decided at start (:func:`choose_transport`)
    transport: str | None = None
    #: sandbox tokens live this long (seconds); 0 means forever (the local default)
    sandbox_token_ttl: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerConfig:
        """Read the configuration from ``env``; :class:`UsageError` names what is missing."""
        name = env.get(contract.GATEWAY_NAME_ENV, "").strip()
        if not name:
            raise UsageError(
                f"{contract.GATEWAY_NAME_ENV} is not set",
                hint="the gateway is deployed by `pytest-openshell gateway start`",
            )
        compute = settings_from_env(env, gateway_name=name)
        faults = parse_faults(env.get(contract.FAULTS_ENV, ""))
        node_name, source = _node_identity(env, faults)
        variant = env.get(contract.VARIANT_ENV, "v1").strip() or "v1"
        schema_for_variant(variant)  # refuse an unknown variant early
        port_text = env.get(contract.GATEWAY_PORT_ENV, "").strip()
        try:
            gateway_port = int(port_text) if port_text else LISTEN_PORT
        except ValueError:
            raise UsageError(f"{contract.GATEWAY_PORT_ENV}={port_text!r} is not a port") from None
        sans_text = env.get(contract.EXTRA_SANS_ENV, "")
        sans = tuple(s.strip() for s in sans_text.split(",") if s.strip())
        image = env.get(contract.SANDBOX_IMAGE_ENV, "").strip()
        transport = env.get(contract.TRANSPORT_ENV, "").strip() or None
        if transport is not None and transport not in contract.TRANSPORTS:
            raise UsageError(
                f"{contract.TRANSPORT_ENV}={transport!r} is not a transport",
                hint=f"use one of {', '.join(contract.TRANSPORTS)}",
            )
        ttl_text = env.get(contract.SANDBOX_TOKEN_TTL_ENV, "").strip()
        try:
            token_ttl = float(ttl_text) if ttl_text else 0.0
        except ValueError:
            token_ttl = -1.0
        if token_ttl < 0:
            raise UsageError(
                f"{contract.SANDBOX_TOKEN_TTL_ENV}={ttl_text!r} is not a number of seconds",
                hint="0 means tokens never expire",
            )
        session_text = env.get(contract.SSH_SESSION_TTL_ENV, "").strip()
        try:
            session_ttl = float(session_text) if session_text else 86400.0
        except ValueError:
            raise UsageError(
                f"{contract.SSH_SESSION_TTL_ENV}={session_text!r} is not a number of seconds"
            ) from None
        return cls(
            gateway_name=name,
            node_name=node_name,
            node_name_source=source,
            sandbox_image=image or contract.DEFAULT_SANDBOX_IMAGE,
            compute=compute,
            variant=variant,
            extra_sans=sans,
            gateway_port=gateway_port,
            run_id=env.get(contract.RUN_ID_ENV, "").strip() or None,
            image=env.get(contract.GATEWAY_IMAGE_ENV, "").strip(),
            faults=faults,
            transport=transport,
            sandbox_token_ttl=token_ttl,
            session_ttl=max(0.0, session_ttl),
            state_dir=Path(env.get(contract.STATE_DIR_ENV, contract.STATE_DIR)),
            run_dir=Path(env.get(contract.RUN_DIR_ENV, contract.RUN_DIR)),
        )

    def has(self, fault: Fault) -> bool:
        """True when ``fault`` is switched on (and can bite in this variant)."""
        if fault is Fault.RELABEL_ON_UPGRADE and self.variant == "v1":
            return False
        return fault in self.faults

    # -- where things are --

    @property
    def service_name(self) -> str:
        """The name sandboxes reach the gateway by."""
        return f"{contract.GATEWAY_OBJECT_PREFIX}{self.gateway_name}"

    @property
    def store_path(self) -> Path:
        if self.has(Fault.FORGET_SANDBOXES_ON_START):
            # The fault: the store is not kept with the state, and a new start does not find it.
            return self.run_dir / "ephemeral-store" / contract.STORE_FILE
        return self.state_dir / contract.STORE_FILE

    @property
    def secret_path(self) -> Path:
        return self.state_dir / contract.HANDSHAKE_SECRET_FILE

    @property
    def token_key_path(self) -> Path:
        return self.state_dir / contract.SANDBOX_TOKEN_KEY_FILE

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / contract.PKI_DIR

    @property
    def grpc_socket(self) -> Path:
        return self.run_dir / "grpc.sock"

    @property
    def ready_marker(self) -> Path:
        return self.run_dir / contract.READY_MARKER_FILE

    @property
    def schema(self) -> int:
        return schema_for_variant(self.variant)

    @property
    def server_sans(self) -> tuple[str, ...]:
        """SANs the server certificate carries beyond the standard ones: its names on the
        sandboxes' way and whatever the deploy asked for."""
        names = [self.service_name, self.node_name, *self.extra_sans]
        return tuple(dict.fromkeys(names))


def choose_transport(requested: str | None, recorded: str | None, *, fresh: bool) -> str:
    """The transport a gateway speaks: the one its state records, which a deploy cannot change.

    :param recorded: what the state's record says (``""``: a record from before transports
        were recorded, i.e. the default; None: no record at all).
    :param fresh: the store was made by this start (nothing recorded yet, whatever is there).
    :raises StateError: the deploy asked for another transport than the recorded one.
    """
    if fresh or recorded is None:
        return requested or contract.DEFAULT_TRANSPORT
    kept = recorded or contract.DEFAULT_TRANSPORT
    if requested and requested != kept:
        raise StateError(
            f"this gateway was first deployed with transport {kept!r} and keeps it; "
            f"{requested!r} was asked for; nothing was changed",
            hint=f"start it without --transport (or with --transport {kept}); a gateway with "
            f"transport {requested} needs a new one (`gateway start --recreate --transport "
            f"{requested}` loses every sandbox)",
        )
    return kept


def _node_identity(env: Mapping[str, str], faults: frozenset[Fault]) -> tuple[str, str]:
    """The node name: :data:`~openshell_core.wire.contract.NODE_NAME_ENV`, or the hostname when it
    is
    missing.

    With the fault switched on (its name says how upstream's node identity followed the host's
    generated id) the hostname wins even when the variable is set.
    """
    pinned = env.get(contract.NODE_NAME_ENV, "").strip()
    if pinned and Fault.CONTAINER_ID_HOSTNAME not in faults:
        return pinned, "env"
    return socket.gethostname(), "hostname"
