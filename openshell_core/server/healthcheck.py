"""The gateway image's HEALTHCHECK: healthy when the gateway port accepts a connection."""

from __future__ import annotations

import socket
import sys


def main() -> int:
    try:
        with socket.create_connection(("127.0.0.1", 30051), timeout=3):
            return 0
    except OSError as exc:
        print(f"gateway port 30051 refuses connections: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
