"""A stand-in gateway for the lifecycle tests (runs in the stub image; Python's stdlib only).

It keeps what the real gateway keeps on its volume that the host side looks at: the PKI under
``/var/lib/openshell/pki`` (copied from the image's bundle on first start, reused after), and it
serves TLS with client certificates on 30051. ``starts`` on the volume records every start.

It fails on purpose (exit code 3, at start) when ``STUB_FAIL=exit`` is in its environment or the
file ``/var/lib/openshell/stub-fail`` exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

STATE = Path("/var/lib/openshell")
PKI = STATE / "pki"
BUNDLE = Path("/opt/stub/pki")
READY = Path("/run/stub-ready")
FAIL_MARKER = STATE / "stub-fail"
VARIANT = os.environ.get("STUB_VARIANT", "?")


def say(message: str) -> None:
    print(f"stub[{VARIANT}]: {message}", flush=True)


def install_pki() -> None:
    if (PKI / "ca.crt").exists():
        say("reusing the PKI on the volume")
        return
    PKI.mkdir(parents=True, exist_ok=True)
    for source in sorted(BUNDLE.iterdir()):
        target = PKI / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600 if source.name.endswith(".key") else 0o644)
    say("installed a new PKI on the volume")


def serve(conn: socket.socket, context: ssl.SSLContext) -> None:
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(30)
            while tls.recv(4096):
                pass
    except OSError:
        pass


def main() -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    READY.unlink(missing_ok=True)
    say(
        f"starting on {socket.gethostname()} "
        f"(OPENSHELL_NODE_NAME={os.environ.get('OPENSHELL_NODE_NAME', '')})"
    )
    if os.environ.get("STUB_FAIL") == "exit" or FAIL_MARKER.exists():
        say("failing on purpose")
        return 3
    install_pki()
    with (STATE / "starts").open("a") as record:
        record.write(f"{VARIANT} {time.time():.3f}\n")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(PKI / "server.crt", PKI / "server.key")
    context.load_verify_locations(PKI / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server = socket.create_server(("0.0.0.0", 30051))
    server.settimeout(0.5)
    READY.write_text("ready\n")
    say("ready")
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        threading.Thread(target=serve, args=(conn, context), daemon=True).start()
    READY.unlink(missing_ok=True)
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
