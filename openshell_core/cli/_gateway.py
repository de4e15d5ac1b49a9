"""``gateway`` commands: ``start``, ``stop``, ``destroy``, ``status``.

They behave like upstream's ``openshell gateway ...`` (progress as ``[status]`` lines, the same
summary lines on stderr), under a console script of a different name: users may have both.
``status`` exits 0 when the gateway runs and 4 when it does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from openshell_core import labels
from openshell_core.engine import Engine, EngineMode, open_engine
from openshell_core.errors import OpenShellError
from openshell_core.gateway import (
    DeployMode,
    DeployOptions,
    GatewayState,
    deploy,
    destroy,
    detect_state,
    stop,
    validate_name,
)
from openshell_core.gateway.names import DEFAULT_GATEWAY_NAME, container_name
from openshell_core.gateway.readiness import (
    DEFAULT_API_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    SandboxesBack,
    wait_sandboxes_back,
)
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.metadata import (
    MetadataError,
    read_active_gateway,
    read_metadata,
    set_active_gateway,
)
from openshell_core.images import ImageSet
from openshell_core.wire.contract import TRANSPORT_NSSH1, TRANSPORT_SUPERVISOR, TRANSPORTS

log = logging.getLogger("openshell.gateway")

EXIT_OK = 0
EXIT_NOT_RUNNING = 4
#: ``status``'s state for a gateway whose Docker objects are not ours (exit 4).
NOT_OURS = "not-ours"
#: The environment variable upstream's CLI reads the gateway name from.
NAME_ENV = "OPENSHELL_GATEWAY"


def register(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="start, stop, destroy or inspect a gateway",
        description="Operate an OpenShell gateway on Docker: a container, a volume and a network "
        "named openshell-cluster-{name}. `start` resumes from whatever state Docker holds and "
        "never loses the volume; only `destroy` and `start --recreate` remove it.",
    )
    actions = gateway.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser(
        "start",
        help="deploy, resume or (with --recreate) re-create a gateway",
        description="Deploy a gateway, or resume it: a running gateway is left alone, a stopped "
        "one is started in its own container, a volume without a container gets a new container "
        "from --image. Nothing is ever pulled.",
    )
    _common(start, default_name="$OPENSHELL_GATEWAY, else openshell")
    start.add_argument(
        "--port",
        type=int,
        default=None,
        help="host port on 127.0.0.1 (default: the port in the gateway's metadata, else 8080)",
    )
    start.add_argument(
        "--image",
        default=None,
        help="gateway image for a new container (default: the one that last ran on the "
        f"gateway's volume, else {ImageSet().gateway})",
    )
    start.add_argument(
        "--sandbox-image",
        default=None,
        help=f"image of the sandboxes the gateway creates (default: {ImageSet().sandbox})",
    )
    start.add_argument(
        "--gateway-host",
        default=None,
        help="the host users reach the gateway by (certificate name and endpoint host)",
    )
    start.add_argument(
        "--transport",
        default=None,
        choices=list(TRANSPORTS),
        help="how the gateway reaches its sandboxes, chosen at its first deploy and kept on its "
        f"volume: {TRANSPORT_NSSH1} (it dials each supervisor; the default) or "
        f"{TRANSPORT_SUPERVISOR} (each supervisor dials out to it, as upstream's today)",
    )
    start.add_argument(
        "--sandbox-token-ttl",
        type=float,
        default=None,
        help="seconds a sandbox token lives in the supervisor transport (default 0: no expiry)",
    )
    start.add_argument(
        "--recreate",
        action="store_true",
        help="remove container, volume and network first: ALL gateway state is lost",
    )
    start.add_argument(
        "--health-timeout",
        type=float,
        default=DEFAULT_HEALTH_TIMEOUT,
        help=f"seconds to wait for the health check (default {DEFAULT_HEALTH_TIMEOUT:.0f})",
    )
    start.add_argument(
        "--api-timeout",
        type=float,
        default=DEFAULT_API_TIMEOUT,
        help=f"seconds to wait for the API after that (default {DEFAULT_API_TIMEOUT:.0f})",
    )
    start.set_defaults(run=_start)

    for action, helptext, run in (
        ("stop", "stop the gateway container; volume, network and metadata stay", _stop),
        (
            "destroy",
            "remove the gateway for good: container, sandboxes, volume, network, host-side files",
            _destroy,
        ),
        (
            "status",
            "say what Docker holds for the gateway (exit 0 when it runs, 4 when not)",
            _status,
        ),
    ):
        parser = actions.add_parser(action, help=helptext, description=helptext)
        _common(parser, default_name="$OPENSHELL_GATEWAY, else the active gateway, else openshell")
        if action == "status":
            parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)


def _common(parser: argparse.ArgumentParser, *, default_name: str) -> None:
    parser.add_argument("--name", default=None, help=f"gateway name (default: {default_name})")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=[mode.value for mode in EngineMode],
        help="which Docker engine (default: auto)",
    )


def _name(args: argparse.Namespace, *, use_active: bool) -> str:
    if args.name is not None:  # given, even empty: it is the name, never a reason to pick another
        return validate_name(args.name)
    name = os.environ.get(NAME_ENV) or (read_active_gateway() if use_active else None)
    return validate_name(name or DEFAULT_GATEWAY_NAME)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _engine(args: argparse.Namespace) -> Engine:
    return open_engine(args.engine)


def _start(args: argparse.Namespace) -> int:
    name = _name(args, use_active=False)
    defaults = ImageSet()
    options = DeployOptions(
        name=name,
        image=args.image or None,
        port=args.port,
        gateway_host=args.gateway_host,
        recreate=args.recreate,
        sandbox_image=args.sandbox_image or defaults.sandbox,
        health_timeout=args.health_timeout,
        api_timeout=args.api_timeout,
        transport=args.transport,
        sandbox_token_ttl=args.sandbox_token_ttl,
    )
    with _engine(args) as engine:
        outcome = deploy(engine, options)
        back = _await_sandboxes(engine, name)
    if back is not None and back.pending:
        _say(
            f"! {len(back.pending)} sandbox(es) still coming back: {', '.join(back.pending)} "
            f"(`pytest-openshell sandbox list --gateway {name}` shows when they are READY)"
        )
    elif back is not None and back.back:
        _say(f"✓ {len(back.back)} sandbox(es) back: {', '.join(back.back)}")
    if outcome.mode is DeployMode.ALREADY_RUNNING:
        _say(f"✓ Gateway '{name}' is already running.")
        return EXIT_OK
    _say("✓ Gateway ready")
    _say(f"  Name: {name}")
    _say(f"  Endpoint: {outcome.endpoint}")
    set_active_gateway(name)
    _say(f"✓ Active gateway set to '{name}'")
    return EXIT_OK


def _await_sandboxes(engine: Engine, name: str) -> SandboxesBack | None:
    """Wait for the sandboxes the gateway is bringing back (None: it cannot tell us).

    ``gateway start`` waits rather than only counting them: "ready" should mean that a
    ``sandbox connect`` right after it works, and the wait is short (a few seconds a sandbox,
    at most ``readiness.SANDBOX_RETURN_TIMEOUT``), bounded, and over at once when nothing is coming.
    """
    try:
        client = GatewayClient.for_gateway(name)
    except OpenShellError as exc:
        log.info("cannot ask gateway %s about its sandboxes: %s", name, exc.message)
        return None

    def coming_back() -> set[str]:
        # The gateway answers before its first reconciliation: until then it reports a sandbox
        # whose container was stopped as READY. Docker's view says which of those are not.
        running = {
            str((container.get("Labels") or {}).get(labels.SANDBOX_ID))
            for container in engine.list_containers(
                label_filters=[f"{labels.GATEWAY}={name}", f"{labels.ROLE}=sandbox"], all=False
            )
        }
        return {
            info.name
            for info in client.list_sandboxes(all_workspaces=True)
            if info.phase == "PROVISIONING" or (info.phase == "READY" and info.id not in running)
        }

    try:
        with client:
            return wait_sandboxes_back(coming_back)
    except OpenShellError as exc:
        log.info("cannot ask gateway %s about its sandboxes: %s", name, exc.message)
        return None


def _stop(args: argparse.Namespace) -> int:
    name = _name(args, use_active=True)
    _say(f"• Stopping gateway {name}...")
    with _engine(args) as engine:
        outcome = stop(engine, name)
    if outcome.stopped:
        _say(f"✓ Gateway {name} stopped.")
    else:
        _say(f"✓ Gateway {name} was not running ({outcome.state_before.value}).")
    return EXIT_OK


def _destroy(args: argparse.Namespace) -> int:
    name = _name(args, use_active=True)
    _say(f"• Destroying gateway {name}...")
    with _engine(args) as engine:
        destroy(engine, name)
    _say(f"✓ Gateway {name} destroyed.")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    name = _name(args, use_active=True)
    with _engine(args) as engine:
        facts = detect_state(engine, name)
    record = facts.to_json()
    if facts.foreign:
        # Docker's view of objects that are not ours is not this gateway's state.
        record["docker_state"] = record["state"]
        record["state"] = NOT_OURS
    record["container"] = container_name(name)
    record["active"] = read_active_gateway() == name
    try:
        metadata = read_metadata(name)
    except MetadataError as exc:
        record["endpoint"] = None
        record["metadata_error"] = exc.message
    else:
        record["endpoint"] = metadata.gateway_endpoint if metadata else None
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(_describe(record))
    if facts.foreign:
        return EXIT_NOT_RUNNING
    return EXIT_OK if facts.state is GatewayState.RUNNING else EXIT_NOT_RUNNING


def _describe(record: dict[str, Any]) -> str:
    if record["state"] == NOT_OURS:
        return "\n".join(
            [
                f"gateway {record['name']}: not ours: Docker holds "
                + ", ".join(record["foreign"])
                + f" without the {labels.MANAGED_BY}={labels.MANAGER} label, made by another "
                "tool (upstream's `openshell` CLI?); pytest-openshell neither reports on it nor "
                "touches it",
                "  hint: remove it yourself if it is garbage, or choose another gateway name "
                "with --name",
            ]
        )
    lines = [f"gateway {record['name']}: {record['state']}"]
    if record["container_id"]:
        health = record["health"] or "no health check"
        lines.append(
            f"  container: {record['container']} ({str(record['container_id'])[:12]}, "
            f"{record['container_status']}, {health}, {record['restart_count']} restarts)"
        )
        lines.append(f"  image: {record['image']}")
        lines.append(f"  transport: {record['transport']}")
        if record["host_port"]:
            lines.append(f"  port: 127.0.0.1:{record['host_port']}")
    lines.append(f"  volume: {'present' if record['volume_exists'] else 'absent'}")
    network = "absent" if not record["network_id"] else str(record["network_id"])[:12]
    if record["network_stale"]:
        network += " (the container's attachment is stale; `gateway start` reconciles it)"
    lines.append(f"  network: {network}")
    if record["endpoint"]:
        lines.append(f"  endpoint: {record['endpoint']}")
    if record.get("metadata_error"):
        lines.append(f"  metadata: {record['metadata_error']}")
    lines.extend(f"  not ours: {item}" for item in record["foreign"])
    return "\n".join(lines)
