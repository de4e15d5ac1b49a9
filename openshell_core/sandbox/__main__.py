"""The sandbox image's entrypoint: ``python3 -m openshell_core.sandbox``.

Runs under the container's init (``init: true``), which forwards SIGTERM here; a stop ends every
SSH session and command and exits 0. Everything is logged to stderr, i.e. ``docker logs``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from openshell_core.sandbox.supervisor import ConfigError, Supervisor, SupervisorConfig, serve
from openshell_core.wire import contract

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
    if os.environ.get(contract.TRANSPORT_ENV, "") != contract.TRANSPORT_SUPERVISOR:
        asyncio.run(serve(config))
        return 0
    # The supervisor transport: dial out (the only part of the supervisor that needs gRPC).
    from openshell_core.sandbox.dialout import (  # noqa: PLC0415 (gRPC for this transport only)
        DialOut,
        DialOutConfig,
        DialOutError,
    )

    try:
        dial_config = DialOutConfig.from_env(os.environ)
    except DialOutError as exc:
        logging.getLogger("openshell.sandbox").error("%s", exc)
        return EXIT_CONFIG

    async def hold(supervisor: Supervisor) -> None:
        await DialOut(dial_config, supervisor).run()

    asyncio.run(serve(config, dial_out=hold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
