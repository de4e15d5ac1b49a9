"""Sandbox image entrypoint (minimal until the supervisor lands): wait for SIGTERM."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
