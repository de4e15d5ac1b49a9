"""The sandbox image's entrypoint: ``python3 -m openshell_core.sandbox``.

Runs under the container's init (``init: true``), which forwards SIGTERM here; a stop ends every
SSH session and command and exits 0. Everything is logged to stderr, i.e. ``docker logs``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from openshell_core.sandbox.supervisor import ConfigError, SupervisorConfig, serve

EXIT_CONFIG = 2


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = SupervisorConfig.from_env(os.environ)
    except ConfigError as exc:
        logging.getLogger("openshell.sandbox").error("%s", exc)
        return EXIT_CONFIG
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
