"""``engine`` and ``images`` commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from openshell_core.engine import EngineMode, PrivateEngine, open_engine
from openshell_core.images import ensure_images


def register(commands: Any) -> None:
    engine = commands.add_parser(
        "engine",
        help="start, stop or inspect the private Docker engine",
        description="The private engine is an isolated dockerd this tool runs under "
        "$OPENSHELL_ENGINE_ROOT (default /var/lib/pytest-openshell/engines). It never touches "
        "the machine's own Docker.",
    )
    actions = engine.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext, run in (
        ("start", "start it (a no-op when it runs)", _start),
        ("stop", "stop it gracefully, with its containers", _stop),
        ("restart", "stop it gracefully and start it again", _restart),
        ("status", "say whether it runs and where", _status),
        ("env", "print the DOCKER_HOST line that points a shell at it", _env),
    ):
        action = actions.add_parser(name, help=helptext, description=helptext)
        action.add_argument("--name", default="default", help="engine name (default: default)")
        if name == "status":
            action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(run=run)

    images = commands.add_parser(
        "images",
        help="build the gateway and sandbox images offline",
        description="Build the base image (debootstrap, cached), the gateway images (v1, v2) and "
        "the sandbox image on an engine. Nothing is pulled; unchanged inputs rebuild nothing.",
    )
    image_actions = images.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = image_actions.add_parser("build", help="build what is missing or stale")
    build.add_argument(
        "--engine",
        default="auto",
        choices=[mode.value for mode in EngineMode],
        help="which engine to build on (default: auto)",
    )
    build.set_defaults(run=_build)


def _start(args: argparse.Namespace) -> int:
    private = PrivateEngine(args.name)
    started = private.start()
    print(f"engine {args.name} {'started' if started else 'already running'}: {private.host}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    PrivateEngine(args.name).stop()
    print(f"engine {args.name} stopped")
    return 0


def _restart(args: argparse.Namespace) -> int:
    PrivateEngine(args.name).restart()
    print(f"engine {args.name} restarted")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = PrivateEngine(args.name).status()
    if args.json:
        record: dict[str, Any] = {**status.__dict__, "root": str(status.root)}
        print(json.dumps(record, indent=2))
    else:
        state = f"running (pid {status.pid})" if status.running else "not running"
        print(
            f"engine {status.name}: {state}\n  host: {status.host}\n  root: {status.root}\n"
            f"  address pool: {status.address_pool}"
        )
    return 0 if status.running else 4


def _env(args: argparse.Namespace) -> int:
    print(f"export DOCKER_HOST={PrivateEngine(args.name).host}")
    return 0


def _build(args: argparse.Namespace) -> int:
    engine = open_engine(args.engine)
    images = ensure_images(engine)
    for ref in (images.gateway, images.gateway_upgrade, images.sandbox):
        print(ref)
    return 0
