"""Gateway lifecycle over Docker: names, state detection, reconcilers, deploy, stop, destroy,
readiness waits and the host-side metadata and mTLS files.

The Docker objects and the container contract are in ``docs/internals.md``; the behaviour follows
upstream's ``gateway start|stop|destroy`` (command x state matrix in :mod:`.deployment`), doing
better where upstream lost state.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openshell_core.gateway.deployment import (
        DEFAULT_PORT,
        DeployMode,
        DeployOptions,
        DeployOutcome,
        deploy,
    )
    from openshell_core.gateway.metadata import (
        GatewayMetadata,
        MetadataError,
        MtlsFiles,
        read_active_gateway,
        read_metadata,
        set_active_gateway,
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

#: Where each public name lives. Loaded on first use, so that a light user of one module (ssh-proxy
#: reads the host-side metadata) does not import Docker's client and the whole lifecycle.
_SOURCES = {
    "ApiProbe": "readiness",
    "ApiTarget": "readiness",
    "DEFAULT_PORT": "deployment",
    "DeployMode": "deployment",
    "DeployOptions": "deployment",
    "DeployOutcome": "deployment",
    "DestroyOutcome": "teardown",
    "GatewayFacts": "state",
    "GatewayMetadata": "metadata",
    "GatewayState": "state",
    "MetadataError": "metadata",
    "MtlsFiles": "metadata",
    "StopOutcome": "teardown",
    "container_name": "names",
    "deploy": "deployment",
    "destroy": "teardown",
    "detect_state": "state",
    "network_name": "names",
    "node_name": "names",
    "read_active_gateway": "metadata",
    "read_metadata": "metadata",
    "set_active_gateway": "metadata",
    "stop": "teardown",
    "tls_probe": "readiness",
    "validate_name": "names",
    "volume_name": "names",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:  # a submodule (``from openshell_core.gateway import names``) is imported
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PORT",
    "ApiProbe",
    "ApiTarget",
    "DeployMode",
    "DeployOptions",
    "DeployOutcome",
    "DestroyOutcome",
    "GatewayFacts",
    "GatewayMetadata",
    "GatewayState",
    "MetadataError",
    "MtlsFiles",
    "StopOutcome",
    "container_name",
    "deploy",
    "destroy",
    "detect_state",
    "network_name",
    "node_name",
    "read_active_gateway",
    "read_metadata",
    "set_active_gateway",
    "stop",
    "tls_probe",
    "validate_name",
    "volume_name",
]
