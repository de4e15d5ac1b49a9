"""The gateway image's HEALTHCHECK: healthy when the store is open, the handshake secret and the
PKI exist, and the TLS port accepts connections.

The server writes its ready marker only after it opened the store, reconciled the secret and the
PKI and started listening; it removes the marker when it starts and when it stops.
"""

from __future__ import annotations

import os
import socket
import sys

from openshell_core.errors import OpenShellError
from openshell_core.server.config import ServerConfig

_PKI_FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")


def problems(config: ServerConfig) -> list[str]:
    """What keeps the gateway from being healthy (empty when healthy)."""
    found = []
    if not config.ready_marker.exists():
        found.append("the server has not reported ready")
    if not config.store_path.exists():
        found.append(f"no store at {config.store_path}")
    if not config.secret_path.exists():
        found.append("no SSH handshake secret")
    missing = [name for name in _PKI_FILES if not (config.pki_dir / name).exists()]
    if missing:
        found.append("PKI files missing: " + ", ".join(missing))
    try:
        with socket.create_connection(("127.0.0.1", config.listen_port), timeout=3):
            pass
    except OSError as exc:
        found.append(f"port {config.listen_port} refuses connections: {exc}")
    return found


def main() -> int:
    try:
        config = ServerConfig.from_env(os.environ)
    except OpenShellError as exc:
        print(f"unhealthy: {exc.message}", file=sys.stderr)
        return 1
    found = problems(config)
    for problem in found:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
