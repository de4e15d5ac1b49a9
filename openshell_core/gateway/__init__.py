"""Gateway lifecycle over Docker: names, state detection, reconcilers, deploy, stop, destroy and
readiness waits. The host-side metadata and mTLS files are :mod:`openshell_core.host.metadata`.

The Docker objects and the container contract are in ``docs/internals.md``; the behaviour follows
upstream's ``gateway start|stop|destroy`` (command x state matrix in :mod:`.deployment`), doing
better where upstream lost state.
"""

from __future__ import annotations

from openshell_core.gateway.deployment import (
    DEFAULT_PORT,
    DeployMode,
    DeployOptions,
    DeployOutcome,
    deploy,
)
from openshell_core.gateway.names import (
    container_name,
    network_name,
    node_name,
    validate_name,
    volume_name,
)
from openshell_core.gateway.readiness import ApiProbe, ApiTarget, tls_probe
from openshell_core.gateway.state import GatewayFacts, GatewayState, detect_state
from openshell_core.gateway.teardown import DestroyOutcome, StopOutcome, destroy, stop

__all__ = [
    "DEFAULT_PORT",
    "ApiProbe",
    "ApiTarget",
    "DeployMode",
    "DeployOptions",
    "DeployOutcome",
    "DestroyOutcome",
    "GatewayFacts",
    "GatewayState",
    "StopOutcome",
    "container_name",
    "deploy",
    "destroy",
    "detect_state",
    "network_name",
    "node_name",
    "stop",
    "tls_probe",
    "validate_name",
    "volume_name",
]
