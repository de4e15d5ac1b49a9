"""The OpenShell wire protocol: the one module that imports the official SDK's generated code.

The message and service definitions of ``openshell.v1.OpenShell`` come from the ``openshell``
package on PyPI, unmodified. Everything else (the gateway's servicer, the host-side client) reaches
them through this module, so an SDK layout change is fixed here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
from openshell._proto import datamodel_pb2, openshell_pb2, openshell_pb2_grpc

#: Messages and enums of ``openshell.v1`` (``pb.Sandbox``, ``pb.SANDBOX_PHASE_READY``, ...).
pb = openshell_pb2
#: Shared data model (``dm.ObjectMeta``, ``dm.WorkspaceSelector``).
dm = datamodel_pb2

SERVICE_NAME: Final = "openshell.v1.OpenShell"
#: The workspace the SDK's examples and our CLI use.
DEFAULT_WORKSPACE: Final = "default"
#: Sandbox annotation carrying its SSH host public key (``ssh-ed25519 AAAA...``): the API has a
#: field for the key's fingerprint only, and an ``ssh`` client needs the key itself.
HOST_PUBLIC_KEY_ANNOTATION: Final = "openshell.ai/ssh-host-public-key"
#: Trailing metadata in which the reference gateway sends an error's hint (the next thing to do),
#: beside the status message. Binary (``-bin``): a hint may be any UTF-8 text.
HINT_METADATA: Final = "openshell-hint-bin"

#: Base class of a server-side implementation; methods it does not override answer UNIMPLEMENTED.
Servicer = openshell_pb2_grpc.OpenShellServicer


def add_servicer_to_server(servicer: Any, server: grpc.Server | grpc.aio.Server) -> None:
    """Register ``servicer`` for ``openshell.v1.OpenShell`` on ``server``."""
    openshell_pb2_grpc.add_OpenShellServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


def stub(channel: grpc.Channel) -> Any:
    """A client stub of ``openshell.v1.OpenShell`` on ``channel`` (one method per RPC)."""
    return openshell_pb2_grpc.OpenShellStub(channel)  # type: ignore[no-untyped-call]


_PHASE_PREFIX: Final = "SANDBOX_PHASE_"


def phase_value(name: str) -> int:
    """``"READY"`` -> ``pb.SANDBOX_PHASE_READY``; unknown names map to UNKNOWN."""
    try:
        return int(pb.SandboxPhase.Value(_PHASE_PREFIX + name))
    except ValueError:
        return int(pb.SANDBOX_PHASE_UNKNOWN)


def phase_name(value: int) -> str:
    """``pb.SANDBOX_PHASE_READY`` -> ``"READY"``; unknown values give ``"UNKNOWN"``."""
    try:
        return str(pb.SandboxPhase.Name(value)).removeprefix(_PHASE_PREFIX)
    except ValueError:
        return "UNKNOWN"


def workspace_selector(workspace: str | None) -> dm.WorkspaceSelector:
    """A selector for one workspace, or for all of them when ``workspace`` is None."""
    if workspace is None:
        return dm.WorkspaceSelector(all_workspaces=dm.AllWorkspaces())
    return dm.WorkspaceSelector(workspace=workspace)


def selected_workspace(selector: dm.WorkspaceSelector) -> str | None:
    """The workspace a request names: None for all workspaces, ``default`` when unset."""
    if selector.HasField("all_workspaces"):
        return None
    return selector.workspace or DEFAULT_WORKSPACE
