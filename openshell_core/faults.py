"""Fault switches: re-create, on purpose, the upstream regressions the conformance suite must catch.

A testing aid, off by default. ``OPENSHELL_FAULTS`` holds a comma-separated list of fault names;
the host side (deploy) reads it when it deploys a gateway and passes it into the gateway container,
whose server reads it at start. Each switch re-creates one failure that hurt real users; with any
one of them on, at least one conformance test must fail.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping

from openshell_core.errors import UsageError
from openshell_core.wire import contract

ENV_VAR = contract.FAULTS_ENV


class Fault(enum.Enum):
    """The named regressions of docs/conformance.md, and where each one lives."""

    #: server: a new handshake secret on every gateway start; old sandboxes reject every tunnel.
    REGENERATE_HANDSHAKE_SECRET = "regenerate-handshake-secret"
    #: deploy + server: node identity follows the container id, orphaning the old container's work.
    CONTAINER_ID_HOSTNAME = "container-id-hostname"
    #: server: /sandbox lives in the container layer, lost when a sandbox is recreated.
    NO_WORKSPACE_VOLUME = "no-workspace-volume"
    #: server: seeding ignores the sentinel, overwriting user changes on every start.
    RESEED_WORKSPACE = "reseed-workspace"
    #: deploy: a stopped container keeps its stale network id ("network ... not found").
    NO_NETWORK_RECONCILE = "no-network-reconcile"
    #: deploy: the gateway container gets no restart policy and stays down after a daemon restart.
    NO_RESTART_POLICY = "no-restart-policy"
    #: server: certificates regenerated on resume (secrets read before the store is ready).
    ROTATE_PKI_ON_RESUME = "rotate-pki-on-resume"
    #: deploy: a failed resume falls back to destroying the volume.
    WIPE_VOLUME_ON_RESUME_FAILURE = "wipe-volume-on-resume-failure"
    #: deploy: a resume tries to pull the image, which fails for local-only images.
    PULL_ON_RESUME = "pull-on-resume"
    #: server: the store is not on the volume, so it is lost with the container.
    FORGET_SANDBOXES_ON_START = "forget-sandboxes-on-start"
    #: server (upgrade image): ownership labels derived differently; old sandboxes are purged.
    RELABEL_ON_UPGRADE = "relabel-on-upgrade"
    #: server: a sandbox whose container stopped out of band is marked Error for good.
    ERROR_IS_TERMINAL = "error-is-terminal"
    #: server: CreateSandbox (every store write) answered before it is committed; a kill loses it.
    ACK_BEFORE_COMMIT = "ack-before-commit"
    #: server: an appending exec is answered before it reaches the workspace; a kill drops it.
    LOST_APPEND = "lost-append"
    #: server: stop and start are refused for a sandbox in Error, so only delete is left.
    ERROR_REFUSES_STOP = "error-refuses-stop"
    #: server: the sandbox's own command is run once after creation, not by the sandbox's
    #: container, so a restarted container runs only its supervisor.
    NO_COMMAND_REPLAY = "no-command-replay"
    #: server: a new sandbox-token signing key on every gateway start (upstream's JWT key
    #: rotation): every supervisor's token stops verifying, and its sandboxes never come back.
    REGENERATE_TOKEN_KEY = "regenerate-token-key"
    #: server: an expired sandbox token is not exchanged (``IssueSandboxToken`` keeps to unexpired
    #: ones), so a supervisor whose token expired while the gateway was down never reconnects.
    TOKEN_EXPIRY_STRANDS = "token-expiry-strands"
    #: server (``supervisor`` transport): session records restored from the store at start are
    #: taken as live owners, so a supervisor coming back to a restarted gateway is refused as a
    #: duplicate of its own old session (upstream NVIDIA/OpenShell #3546).
    STALE_SUPERVISOR_OWNER = "stale-supervisor-owner"


def parse_faults(text: str | Iterable[str]) -> frozenset[Fault]:
    """Parse ``"a,b"`` (or names) into faults; unknown names are a :class:`UsageError`."""
    names = text.split(",") if isinstance(text, str) else list(text)
    faults = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        try:
            faults.add(Fault(name))
        except ValueError:
            known = ", ".join(fault.value for fault in Fault)
            raise UsageError(f"unknown fault {name!r}", hint=f"known faults: {known}") from None
    return frozenset(faults)


def active_faults(env: Mapping[str, str] | None = None) -> frozenset[Fault]:
    """The faults switched on in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    return parse_faults(env.get(ENV_VAR, ""))


def format_faults(faults: Iterable[Fault]) -> str:
    return ",".join(sorted(fault.value for fault in faults))
