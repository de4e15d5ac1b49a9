"""What the host, the gateway and the sandbox must agree on, each spelled once, here.

Every name, path, port, environment variable, header and label that two of the three sides use is
a constant of this module, and every side imports it from here (``tests/test_contract.py`` fails
when one of these values is spelled again in the package sources). Standard library only: the
in-sandbox supervisor and the host's ``ssh-proxy`` import it.

The sides: the *host* (CLI, plugin, ``ssh-proxy``, the deploy code in
:mod:`openshell_core.gateway`), the *gateway* (:mod:`openshell_core.server`, inside the gateway
image) and the *sandbox* (the supervisor, :mod:`openshell_core.sandbox`, inside each sandbox).
"""

from __future__ import annotations

import ipaddress
from typing import Final

# -- ports ------------------------------------------------------------------------------------

#: The gateway's one TLS port inside its container (gRPC and SSH tunnels). The host publishes it.
GATEWAY_PORT: Final = 30051
#: The sandbox supervisor's port: the gateway dials it (NSSH1 preface, then SSH or a command).
SUPERVISOR_PORT: Final = 2222

# -- the gateway's files ------------------------------------------------------------------------

#: The gateway's whole persistent state; the host mounts the gateway's volume here.
STATE_DIR: Final = "/var/lib/openshell"
#: Run-time files of the gateway process (not persistent).
RUN_DIR: Final = "/run/openshell"
#: Where the host mounts the engine's socket directory in the gateway container.
ENGINE_SOCKET_MOUNT: Final = "/run/openshell-engine"
#: Under :data:`STATE_DIR`: the store, the handshake secret and the PKI.
STORE_FILE: Final = "openshell.db"
HANDSHAKE_SECRET_FILE: Final = "secrets/ssh-handshake"
#: The key that signs sandbox tokens (``supervisor`` transport): made once, like the secret.
SANDBOX_TOKEN_KEY_FILE: Final = "secrets/sandbox-token-key"
PKI_DIR: Final = "pki"
CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
SERVER_CERT_FILE: Final = "server.crt"
SERVER_KEY_FILE: Final = "server.key"
CLIENT_CERT_FILE: Final = "client.crt"
CLIENT_KEY_FILE: Final = "client.key"
#: The PKI's files, by role (the host copies the client's three out of the gateway's volume).
PKI_FILES: Final = {
    "ca_cert": CA_CERT_FILE,
    "ca_key": CA_KEY_FILE,
    "server_cert": SERVER_CERT_FILE,
    "server_key": SERVER_KEY_FILE,
    "client_cert": CLIENT_CERT_FILE,
    "client_key": CLIENT_KEY_FILE,
}
#: Under :data:`STATE_DIR`: what the gateway remembers of itself (the image that last opened the
#: store and the store's schema version), read by the host before it makes a new container.
VOLUME_RECORD_FILE: Final = "gateway.json"
#: Under :data:`RUN_DIR`: present while the server is ready (the image's health check reads it).
READY_MARKER_FILE: Final = "ready"


def pki_file(name: str) -> str:
    """A PKI file's path relative to :data:`STATE_DIR` (``pki/ca.crt``)."""
    return f"{PKI_DIR}/{name}"


#: The state a gateway must keep across every disruption, relative to :data:`STATE_DIR`.
GATEWAY_SECRET_STATE: Final = (
    HANDSHAKE_SECRET_FILE,
    SANDBOX_TOKEN_KEY_FILE,
    *(pki_file(n) for n in PKI_FILES.values()),
)

# -- the gateway's environment (host -> gateway) ------------------------------------------------

GATEWAY_NAME_ENV: Final = "OPENSHELL_GATEWAY_NAME"
NODE_NAME_ENV: Final = "OPENSHELL_NODE_NAME"
NETWORK_ENV: Final = "OPENSHELL_NETWORK"
SANDBOX_IMAGE_ENV: Final = "OPENSHELL_SANDBOX_IMAGE"
GATEWAY_PORT_ENV: Final = "OPENSHELL_GATEWAY_PORT"
EXTRA_SANS_ENV: Final = "OPENSHELL_EXTRA_SANS"
RUN_ID_ENV: Final = "OPENSHELL_RUN_ID"
FAULTS_ENV: Final = "OPENSHELL_FAULTS"
#: The image the gateway container runs (it records it on its volume).
GATEWAY_IMAGE_ENV: Final = "OPENSHELL_GATEWAY_IMAGE"
#: Set by the gateway image itself (``v1``, or ``v2`` in the upgrade image).
VARIANT_ENV: Final = "OPENSHELL_GATEWAY_VARIANT"
#: Which compute driver runs the sandboxes (default :data:`DEFAULT_COMPUTE_DRIVER`).
COMPUTE_DRIVER_ENV: Final = "OPENSHELL_COMPUTE_DRIVER"
DEFAULT_COMPUTE_DRIVER: Final = "docker"
#: The compute driver that runs each sandbox as an agent-sandbox ``Sandbox`` on a cluster.
KUBERNETES_COMPUTE_DRIVER: Final = "kubernetes"
#: Its namespace (Sandbox objects, pods and claims); default: the gateway pod's own namespace.
KUBE_NAMESPACE_ENV: Final = "OPENSHELL_KUBE_NAMESPACE"
#: Its gateway id (the ``openshell.ai/gateway-id`` label); default: the gateway's label.
KUBE_GATEWAY_ID_ENV: Final = "OPENSHELL_KUBE_GATEWAY_ID"
#: The API server's URL, plain (``kubectl proxy``, tests); unset: the pod's service account, else
#: the kubeconfig (``KUBECONFIG``) with its current context or :data:`KUBE_CONTEXT_ENV`.
KUBE_API_ENV: Final = "OPENSHELL_KUBE_API"
KUBE_CONTEXT_ENV: Final = "OPENSHELL_KUBE_CONTEXT"
#: The engine the gateway's Docker compute driver uses (Docker's own variable).
DOCKER_HOST_ENV: Final = "DOCKER_HOST"
#: Development overrides of :data:`STATE_DIR` and :data:`RUN_DIR` (running the server outside
#: its image).
#: How the gateway reaches its sandboxes' supervisors: one of :data:`TRANSPORTS`, asked for at
#: the first deploy and kept on the volume (in :data:`VOLUME_RECORD_FILE`).
TRANSPORT_ENV: Final = "OPENSHELL_TRANSPORT"
#: The gateway dials each supervisor and signs an NSSH1 preface (the seeds' transport).
TRANSPORT_NSSH1: Final = "nssh1"
#: Each supervisor dials out to the gateway (ConnectSupervisor, RelayStream; upstream's today).
TRANSPORT_SUPERVISOR: Final = "supervisor"
TRANSPORTS: Final = (TRANSPORT_NSSH1, TRANSPORT_SUPERVISOR)
DEFAULT_TRANSPORT: Final = TRANSPORT_NSSH1
#: Seconds a sandbox token lives (0: no expiry, the local default).
SANDBOX_TOKEN_TTL_ENV: Final = "OPENSHELL_SANDBOX_TOKEN_TTL_SECS"
#: Seconds an SSH session token (``CreateSshSession``) lives (0: forever; default a day).
SSH_SESSION_TTL_ENV: Final = "OPENSHELL_SSH_SESSION_TTL_SECS"
STATE_DIR_ENV: Final = "OPENSHELL_STATE_DIR"
RUN_DIR_ENV: Final = "OPENSHELL_RUN_DIR"

# -- the sandbox's environment (gateway -> sandbox; the authorized keys come from the host) ------

SANDBOX_ID_ENV: Final = "OPENSHELL_SANDBOX_ID"
SANDBOX_NAME_ENV: Final = "OPENSHELL_SANDBOX"
HANDSHAKE_SECRET_ENV: Final = "OPENSHELL_SSH_HANDSHAKE_SECRET"
HANDSHAKE_SKEW_ENV: Final = "OPENSHELL_SSH_HANDSHAKE_SKEW_SECS"
SSH_LISTEN_ENV: Final = "OPENSHELL_SSH_LISTEN_ADDR"
SSH_HOST_KEY_ENV: Final = "OPENSHELL_SSH_HOST_KEY"
#: ``authorized_keys`` lines for the sandbox's SSH server; the host puts its user's key here in
#: the create request's environment.
AUTHORIZED_KEYS_ENV: Final = "OPENSHELL_SSH_AUTHORIZED_KEYS"
#: The sandbox's own command (the create request's ``spec.command``) as a JSON list of strings:
#: the supervisor runs it in :data:`WORKSPACE_DIR` at every start of the sandbox's container.
SANDBOX_COMMAND_ENV: Final = "OPENSHELL_SANDBOX_COMMAND"

#: ``supervisor`` transport: the sandbox's token (gateway-signed, bound to its id), where the
#: supervisor dials (``host:port``), and the PEM material of its mutual TLS.
SANDBOX_TOKEN_ENV: Final = "OPENSHELL_SANDBOX_TOKEN"
GATEWAY_ENDPOINT_ENV: Final = "OPENSHELL_GATEWAY_ENDPOINT"
SUPERVISOR_CA_ENV: Final = "OPENSHELL_SUPERVISOR_TLS_CA"
SUPERVISOR_CERT_ENV: Final = "OPENSHELL_SUPERVISOR_TLS_CERT"
SUPERVISOR_KEY_ENV: Final = "OPENSHELL_SUPERVISOR_TLS_KEY"
#: Under the sandbox's own filesystem (kept across container restarts, outside the workspace):
#: the supervisor's latest renewed token.
SANDBOX_TOKEN_CACHE: Final = "/var/lib/openshell-supervisor/token"

# -- the sandbox's files ------------------------------------------------------------------------

#: The sandbox's workspace: seeded once from the image's own copy, then the user's.
WORKSPACE_DIR: Final = "/sandbox"
#: In :data:`WORKSPACE_DIR` once it was seeded (upstream's name).
WORKSPACE_SENTINEL: Final = ".workspace-initialized"

# -- the SSH tunnel (host -> gateway) -----------------------------------------------------------

CONNECT_PATH: Final = "/connect/ssh"
#: ``GetGatewayInfo`` names the gateway's transport in an extension entry of this name (its
#: ``implementation_name``); ssh-proxy uses ForwardTcp when it says ``supervisor``.
TRANSPORT_INFO_NAME: Final = "openshell.ai/transport"
#: Initial metadata of a ForwardTcp the gateway opened (sent once the sandbox's end is there).
FORWARD_OPEN_METADATA: Final = "openshell-forward-open"
#: ``supervisor`` transport: the condition on every sandbox of ``GetSandbox``/``ListSandboxes``
#: that says which supervisor session it is on (status ``True`` while one is live; reason one of
#: the three below; message :data:`SUPERVISOR_SESSION_MESSAGE`, or the refusal's own message).
#: The reference gateway's: an upstream gateway carries no such condition.
SUPERVISOR_SESSION_CONDITION: Final = "SupervisorSession"
SUPERVISOR_SESSION_CONNECTED: Final = "Connected"
SUPERVISOR_SESSION_DISCONNECTED: Final = "Disconnected"
#: The gateway's last answer to the sandbox's supervisor was to refuse it as a duplicate.
SUPERVISOR_SESSION_REFUSED: Final = "RefusedAsDuplicate"
SUPERVISOR_SESSION_MESSAGE: Final = "session {session} instance {instance} epoch {epoch}"
SANDBOX_ID_HEADER: Final = "X-Sandbox-Id"
TOKEN_HEADER: Final = "X-Sandbox-Token"

# -- labels and object names --------------------------------------------------------------------

LABEL_PREFIX: Final = "openshell.ai/"
MANAGED_BY_LABEL: Final = "openshell.ai/managed-by"
#: The value of :data:`MANAGED_BY_LABEL` (and of :data:`BUILT_BY_LABEL`) on what we make.
MANAGER: Final = "pytest-openshell"
GATEWAY_LABEL: Final = "openshell.ai/gateway"
RUN_ID_LABEL: Final = "openshell.ai/run-id"
ROLE_LABEL: Final = "openshell.ai/role"
INPUT_HASH_LABEL: Final = "openshell.ai/input-hash"
#: On gateway images: the highest store schema version the image opens.
STORE_SCHEMA_LABEL: Final = "openshell.ai/store-schema"
#: On images instead of :data:`MANAGED_BY_LABEL` (a container inherits its image's labels).
BUILT_BY_LABEL: Final = "openshell.ai/built-by"
SANDBOX_ID_LABEL: Final = "openshell.ai/sandbox-id"
#: Upstream's further sandbox labels (on Kubernetes objects): the sandbox's name, its
#: workspace, and the gateway id that owns it.
SANDBOX_NAME_LABEL: Final = "openshell.ai/sandbox-name"
SANDBOX_WORKSPACE_LABEL: Final = "openshell.ai/sandbox-workspace"
GATEWAY_ID_LABEL: Final = "openshell.ai/gateway-id"
NODE_NAME_LABEL: Final = "openshell.ai/node-name"
#: Values of :data:`ROLE_LABEL`.
GATEWAY_ROLE: Final = "gateway"
SANDBOX_ROLE: Final = "sandbox"
SANDBOX_INIT_ROLE: Final = "sandbox-init"
WORKSPACE_ROLE: Final = "sandbox-workspace"
#: A gateway called ``{name}`` owns objects named ``openshell-cluster-{name}``; its sandboxes'
#: objects are named ``openshell-sandbox-{id}...``.
GATEWAY_OBJECT_PREFIX: Final = "openshell-cluster-"
SANDBOX_OBJECT_PREFIX: Final = "openshell-sandbox-"
#: The image a gateway runs sandboxes from when the create request names none.
DEFAULT_SANDBOX_IMAGE: Final = "openshell-sandbox:v1"

# -- secrets ------------------------------------------------------------------------------------

#: Environment variables whose values are secrets: never logged, reported or handed on.
SECRET_ENV_NAMES: Final = (
    HANDSHAKE_SECRET_ENV,
    SSH_HOST_KEY_ENV,
    SANDBOX_TOKEN_ENV,
    SUPERVISOR_KEY_ENV,
)
#: Files (relative to :data:`STATE_DIR`) whose contents are secrets.
SECRET_FILE_NAMES: Final = (
    HANDSHAKE_SECRET_FILE,
    SANDBOX_TOKEN_KEY_FILE,
    pki_file(CA_KEY_FILE),
    pki_file(SERVER_KEY_FILE),
    pki_file(CLIENT_KEY_FILE),
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a target a ``ForwardTcp`` may reach: ``localhost`` or a loopback
    address, nothing else. The gateway refuses any other target and the supervisor checks again,
    so a relay never leaves the sandbox."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
