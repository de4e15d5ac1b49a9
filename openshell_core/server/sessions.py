"""Where an SSH tunnel goes: the gateway's answer to ``CONNECT /connect/ssh`` credentials.

The tunnel endpoint (:mod:`openshell_core.server.tunnel`) asks :class:`SessionResolver` to turn a
sandbox id and a session token into a target, or to refuse with the status upstream used.
The tunnel is signed with the gateway's *current* handshake secret: a sandbox created under
another secret (the ``regenerate-handshake-secret`` fault) rejects it, as upstream's did.
"""

from __future__ import annotations

import asyncio

from openshell_core.server.model import Phase
from openshell_core.server.sandboxes import SandboxService
from openshell_core.server.tunnel import TunnelRefused, TunnelTarget


class SessionResolver:
    """Resolves tunnel credentials against the store."""

    def __init__(self, service: SandboxService) -> None:
        self._service = service

    async def resolve(self, sandbox_id: str, token: str) -> TunnelTarget:
        session = self._service.store.get_session(token)
        if session is None:
            raise TunnelRefused(401, "unknown session token")
        if not session.usable():
            raise TunnelRefused(401, "session token revoked or expired")
        if session.sandbox_id != sandbox_id:
            raise TunnelRefused(401, "session token is for another sandbox")
        record = self._service.get(sandbox_id)
        if record is None or record.phase is Phase.DELETING:
            raise TunnelRefused(404, "sandbox not found")
        if record.phase is not Phase.READY:
            raise TunnelRefused(412, f"sandbox is not ready ({record.phase.value})")
        host, port = self._service.driver.endpoint(sandbox_id)
        service = self._service

        async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await service.open_link(sandbox_id)

        return TunnelTarget(
            sandbox_id=sandbox_id,
            host=host,
            port=port,
            secret=self._service.secret,
            token=token,
            dial=dial,
        )
