"""``sandbox`` and ``ssh-proxy`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from openshell_core.cli._ssh_proxy import resume_options
from openshell_core.engine import EngineMode, open_engine
from openshell_core.errors import NotFoundError, OpenShellError, StateError, UsageError
from openshell_core.gateway import DeployOptions, deploy
from openshell_core.gateway.names import DEFAULT_GATEWAY_NAME, validate_name
from openshell_core.host.api_client import (
    GatewayClient,
    GatewayRpcError,
    SandboxInfo,
    active_gateway,
)
from openshell_core.host.metadata import gateway_dir, read_active_gateway, set_active_gateway
from openshell_core.host.sshproxy.ssh_command import ensure_user_key, ssh_command
from openshell_core.wire.contract import AUTHORIZED_KEYS_ENV

log = logging.getLogger("openshell.cli")


def register(commands: Any) -> None:
    """Add this group's commands to the top-level parser."""
    register_sandbox(commands)


def register_sandbox(commands: Any) -> None:
    sandbox = commands.add_parser(
        "sandbox",
        help="create, list, inspect, delete sandboxes; run commands in them; connect over SSH",
        description="Sandboxes of a gateway (default: the active gateway, or $OPENSHELL_GATEWAY).",
    )
    actions = sandbox.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = _action(actions, "create", "create a sandbox and wait until it is ready", _create)
    create.add_argument("name", nargs="?", default="", help="sandbox name (default: generated)")
    create.add_argument("--image", default="", help="sandbox image (default: the gateway's)")
    create.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable"
    )
    create.add_argument("--no-wait", action="store_true", help="return before it is ready")
    create.add_argument(
        "--engine",
        default="auto",
        choices=[mode.value for mode in EngineMode],
        help="Docker engine to start the gateway on when it is not running (default: auto)",
    )
    create.add_argument("--timeout", type=float, default=180.0, help="seconds to wait (180)")

    listing = _action(actions, "list", "list sandboxes", _list)
    listing.add_argument("--json", action="store_true", help="print JSON")

    get = _action(actions, "get", "show one sandbox", _get)
    get.add_argument("name")
    get.add_argument("--json", action="store_true", help="print JSON")

    delete = _action(actions, "delete", "delete a sandbox, its container and workspace", _delete)
    delete.add_argument("name")

    run = _action(actions, "exec", "run a command in a sandbox; exits with its exit code", _exec)
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.add_argument("--timeout", type=float, default=None, help="seconds the command may run")

    connect = _action(actions, "connect", "open an SSH session in a sandbox", _connect)
    connect.add_argument("name")
    resume_options(connect)
    connect.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def _action(actions: Any, name: str, helptext: str, run: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=helptext, description=helptext)
    parser.add_argument("--gateway", default=None, help="gateway name (default: the active one)")
    parser.set_defaults(run=run)
    return parser


def _gateway(args: argparse.Namespace) -> str:
    """``--gateway``, when given (an empty one is refused, not taken for the default), else
    the active gateway."""
    if args.gateway is not None:
        return validate_name(args.gateway)
    return active_gateway()


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient.for_gateway(_gateway(args))


def user_key(gateway: str) -> Path:
    """The user's SSH key for ``gateway``'s sandboxes, made once with ``ssh-keygen``."""
    key = gateway_dir(gateway) / "ssh" / "id_ed25519"
    return ensure_user_key(key, comment=f"pytest-openshell@{gateway}")


def _create(args: argparse.Namespace) -> int:
    gateway = (
        (validate_name(args.gateway) if args.gateway is not None else None)
        or os.environ.get("OPENSHELL_GATEWAY", "").strip()
        or read_active_gateway()
        or DEFAULT_GATEWAY_NAME
    )
    _bootstrap(gateway, args.engine)
    environment = dict(_pair(item) for item in args.env)
    public = user_key(gateway).with_suffix(".pub").read_text().strip()
    environment.setdefault(AUTHORIZED_KEYS_ENV, public)
    with GatewayClient.for_gateway(gateway) as client:
        info = client.create_sandbox(args.name or None, environment=environment, image=args.image)
        log.info("sandbox %s (%s) is %s", info.name, info.id, info.phase)
        if not args.no_wait:
            info = client.wait_ready(info.name, timeout=args.timeout)
    print(f"{info.name}\t{info.id}\t{info.phase}")
    return 0


def _bootstrap(gateway: str, engine_mode: str) -> None:
    """Start (resume) ``gateway`` when it does not answer, as upstream's ``sandbox create``
    does. A resume never wipes anything; a gateway that answers is left alone."""
    try:
        with GatewayClient.for_gateway(gateway) as client:
            client.health()
        return
    except (NotFoundError, StateError) as exc:
        why = exc.message
    except GatewayRpcError as exc:
        if exc.code != "UNAVAILABLE":
            raise
        why = "it does not answer"
    log.info("gateway %s is not available (%s): starting it", gateway, why)
    with open_engine(engine_mode) as engine:
        deploy(engine, DeployOptions(name=gateway))
    if read_active_gateway() is None:
        set_active_gateway(gateway)


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.list_sandboxes()
    if args.json:
        print(json.dumps([_record(info) for info in found], indent=2))
        return 0
    print("NAME\tID\tPHASE")
    for info in found:
        print(f"{info.name}\t{info.id}\t{info.phase}")
    return 0


def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.get_sandbox(args.name)
    if args.json:
        print(json.dumps(_record(info), indent=2))
    else:
        for key, value in _record(info).items():
            print(f"{key}: {value}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_sandbox(args.name)
    print(f"deleted {args.name}")
    return 0


def _exec(args: argparse.Namespace) -> int:
    argv = _command(args.argv)
    with _client(args) as client:
        result = client.exec(args.name, argv, timeout=args.timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    return result.exit_code


def _connect(args: argparse.Namespace) -> int:
    gateway = _gateway(args)
    key = user_key(gateway)
    with GatewayClient.for_gateway(gateway) as client:
        info = client.get_sandbox(args.name)
        session = client.create_ssh_session(args.name)
        try:
            if not info.host_public_key:
                raise OpenShellError(
                    f"gateway {gateway!r} does not report the SSH host key of {args.name!r}"
                )
            argv = ssh_command(
                gateway,
                session.sandbox_id,
                session.token,
                info.host_public_key,
                key,
                _command(args.argv, required=False),
                resume=not args.no_resume,
                resume_timeout=args.resume_timeout,
            )
            return subprocess.run(argv, check=False).returncode
        finally:
            client.revoke_ssh_session(session.token)


def _command(argv: list[str], *, required: bool = True) -> list[str]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if required and not argv:
        raise UsageError("no command given", hint="put it after `--`: sandbox exec NAME -- ls /")
    return argv


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--env {text!r} is not KEY=VALUE")
    return key, value


def _record(info: SandboxInfo) -> dict[str, Any]:
    record = asdict(info)
    record["labels"] = dict(info.labels)
    return record
