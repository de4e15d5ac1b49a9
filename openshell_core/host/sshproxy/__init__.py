"""The user's end of the SSH tunnel: ``ssh-proxy``, run by ssh as its ProxyCommand.

In parts: :mod:`.tunnel` (mutual TLS and CONNECT), :mod:`.resumable_relay` (the relays),
:mod:`.ssh_command` (the ``ssh`` argv, known hosts, the user key); this module runs them.

It opens mutual TLS to the gateway with the host-side files of ``gateway_files(name)``, sends
``CONNECT /connect/ssh`` with the sandbox id and session token, retries ``412`` (sandbox not
Ready yet) after 1, 2, 4, 8, 8, ... seconds while less than 60 s have passed, fails at once on
any other status, and then relays stdin/stdout to the tunnel.

The relay is a :class:`TunnelRelay`: :class:`PlainRelay` dials once and ends with the tunnel;
:class:`ResumableRelay` (the default of ``ssh-proxy``) opens an OSRS1 stream
(:mod:`openshell_core.wire.osrs1`), and when the tunnel breaks re-dials through the same
:class:`GatewayTunnel` and resumes the stream where it stopped, so that a live SSH session survives
a gateway restart.
"""

from __future__ import annotations

from openshell_core.errors import OpenShellError
from openshell_core.host.sshproxy.resumable_relay import PlainRelay, TunnelRelay
from openshell_core.host.sshproxy.tunnel import Streams, Tunnel
from openshell_core.wire.relay import close_writer, stdio_streams


async def run_proxy(
    tunnel: Tunnel,
    *,
    relay_with: TunnelRelay | None = None,
    local: Streams | None = None,
) -> None:
    """Open the tunnel, then relay this process's stdin/stdout (or ``local``) through it.

    The tunnel is opened before stdin is touched, so a refused CONNECT leaves ssh's pipes alone.

    :raises ConnectFailed, OpenShellError:
    """
    first = await tunnel.open()
    unused = [first]

    async def dial() -> Streams:
        # The first dial gets the tunnel opened above; a resumable relay dials again, one
        # attempt at a time: its own backoff (0.2 s growing to 2 s) retries a sandbox not Ready
        # yet too, where open()'s 412 schedule (1, 2, 4, 8 s) would wait long after it is.
        return unused.pop() if unused else await tunnel.open_once()

    if local is None:
        try:
            local = await stdio_streams()
        except ValueError as exc:
            await close_writer(first[1])
            raise OpenShellError(
                "ssh-proxy needs pipes, sockets or a terminal on stdin and stdout",
                hint="use it as ssh's ProxyCommand",
            ) from exc
    await (relay_with or PlainRelay()).run(local, dial)
