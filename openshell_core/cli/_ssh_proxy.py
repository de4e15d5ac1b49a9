"""``ssh-proxy``: ssh's ProxyCommand. Kept apart from the other commands, and light to import:
ssh starts one for every connection, so its start-up time is paid on every ``ssh``."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from openshell_core.errors import OpenShellError
from openshell_core.host.sshproxy import run_proxy
from openshell_core.host.sshproxy.resumable_relay import PlainRelay, ResumableRelay, TunnelRelay
from openshell_core.host.sshproxy.tunnel import GatewayTunnel, Tunnel
from openshell_core.wire import contract
from openshell_core.wire.osrs1.lines import MAX_RESUME_TIMEOUT, RESUME_TIMEOUT


def register(commands: Any) -> None:
    """Add ``ssh-proxy`` to the top-level parser."""
    proxy = commands.add_parser(
        "ssh-proxy",
        help="relay stdin/stdout to a sandbox through its gateway (ssh's ProxyCommand)",
        description=f"Open CONNECT {contract.CONNECT_PATH} on the gateway's TLS port "
        "(retrying 412 for up to 60 s) and relay stdin/stdout through it. The session is "
        "resumable: when the tunnel breaks (a gateway restart), it reconnects through the gateway "
        "and resumes where it stopped, logging the break and the resume on stderr. Used by "
        "`sandbox connect` as ssh's ProxyCommand; nothing but the SSH stream is ever written to "
        "stdout.",
    )
    proxy.add_argument("--gateway", required=True, help="gateway name (its host-side files)")
    proxy.add_argument("--sandbox-id", required=True, help="the sandbox's id")
    proxy.add_argument("--token", required=True, help="an SSH session token for the sandbox")
    resume_options(proxy)
    proxy.set_defaults(run=_ssh_proxy)


def _gateway_transport(gateway: str) -> str:
    """What the gateway says its transport is (``GetGatewayInfo``); no flag of the user's.

    Asked in a child thread's own gRPC client, which is loaded only here.
    """
    from openshell_core.host.api_client import GatewayClient  # noqa: PLC0415 (gRPC: lazily)

    try:
        with GatewayClient.for_gateway(gateway, timeout=10) as client:
            return client.transport()
    except OpenShellError:
        # A gateway that answers no API here (CONNECT only): the seeds' transport.
        return contract.DEFAULT_TRANSPORT


def resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="a plain session, which ends when the tunnel breaks",
    )
    parser.add_argument(
        "--resume-timeout",
        type=_seconds,
        default=RESUME_TIMEOUT,
        metavar="SECONDS",
        help="how long a broken tunnel is retried before the session is given up "
        f"(default {RESUME_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_RESUME_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_RESUME_TIMEOUT:g}")
    return value


def _ssh_proxy(args: argparse.Namespace) -> int:
    connect = GatewayTunnel.for_gateway(args.gateway, args.sandbox_id, args.token)
    tunnel: Tunnel = connect
    if _gateway_transport(args.gateway) == contract.TRANSPORT_SUPERVISOR:
        # ForwardTcp (loads gRPC, as only this transport needs)
        from openshell_core.host.sshproxy.forward import ForwardTunnel  # noqa: PLC0415

        tunnel = ForwardTunnel(connect)
    relay: TunnelRelay = PlainRelay()
    if not args.no_resume:
        relay = ResumableRelay.for_tunnel(tunnel, resume_timeout=args.resume_timeout)
        # ssh hangs its ProxyCommand up as it exits; its closing our stdin says the same, and
        # waiting for that lets the end of the stream reach the supervisor, which then forgets
        # the stream at once instead of holding it for the resume timeout.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(run_proxy(tunnel, relay_with=relay))
    return 0
