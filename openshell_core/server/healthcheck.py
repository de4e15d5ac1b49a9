"""The gateway image's HEALTHCHECK: healthy when the server has reported ready, the handshake
secret and the PKI are on the volume, and the TLS port accepts connections.

The server writes its ready marker only after it opened the store, reconciled the secret and the
PKI and started listening; it removes the marker when it starts and when it stops. Docker runs this
every second, so it imports nothing but the standard library (no configuration parsing).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

LISTEN_PORT = 30051  # the server's port inside the container (server.config.LISTEN_PORT)
_PKI_FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")


def problems(env: Mapping[str, str]) -> list[str]:
    """What keeps the gateway from being healthy (empty when healthy)."""
    state = Path(env.get("OPENSHELL_STATE_DIR") or "/var/lib/openshell")
    run = Path(env.get("OPENSHELL_RUN_DIR") or "/run/openshell")
    found = []
    if not (run / "ready").exists():
        found.append("the server has not reported ready")
    if not (state / "secrets" / "ssh-handshake").exists():
        found.append("no SSH handshake secret")
    missing = [name for name in _PKI_FILES if not (state / "pki" / name).exists()]
    if missing:
        found.append("PKI files missing: " + ", ".join(missing))
    try:
        with socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=3):
            pass
    except OSError as exc:
        found.append(f"port {LISTEN_PORT} refuses connections: {exc}")
    return found


def main() -> int:
    found = problems(os.environ)
    for problem in found:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
