"""The gateway image's HEALTHCHECK: healthy when the server has reported ready, the handshake
secret and the PKI are in the state directory, and the TLS port accepts connections.

The server writes its ready marker only after it opened the store, reconciled the secret and the
PKI and started listening; it removes the marker when it starts and when it stops. The image's
health check runs this every second, so it imports nothing but the standard library and the
contract (no configuration parsing).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from openshell_core.wire import contract

LISTEN_PORT = contract.GATEWAY_PORT
#: All but the CA's key, which the server keeps only to sign.
_PKI_FILES = (
    contract.CA_CERT_FILE,
    contract.SERVER_CERT_FILE,
    contract.SERVER_KEY_FILE,
    contract.CLIENT_CERT_FILE,
    contract.CLIENT_KEY_FILE,
)


def problems(env: Mapping[str, str]) -> list[str]:
    """What keeps the gateway from being healthy (empty when healthy)."""
    state = Path(env.get(contract.STATE_DIR_ENV) or contract.STATE_DIR)
    run = Path(env.get(contract.RUN_DIR_ENV) or contract.RUN_DIR)
    found = []
    if not (run / contract.READY_MARKER_FILE).exists():
        found.append("the server has not reported ready")
    if not (state / contract.HANDSHAKE_SECRET_FILE).exists():
        found.append("no SSH handshake secret")
    pki = state / contract.PKI_DIR
    missing = [name for name in _PKI_FILES if not (pki / name).exists()]
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
