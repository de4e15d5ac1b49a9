"""The ``supervisor`` transport, gateway side: supervisors dial in, the gateway asks for relays.

Each sandbox's supervisor holds one ``ConnectSupervisor`` stream (its *session*): it says
``SupervisorHello`` (sandbox id, instance id, connection epoch), the gateway answers
``SessionAccepted`` with the heartbeat interval, and both send heartbeats. The newest session of a
sandbox always wins: a supervisor that comes back (a new epoch after a reconnect, a new instance
after a restart) replaces whatever was held for it, live or stale, and the replaced stream is
ended. Live sessions are kept in memory; each one's record (session id, instance, epoch, when)
is kept in the store, so the API can say which session a sandbox is on.

When the gateway needs bytes to a sandbox (an SSH tunnel, an exec, a TCP forward) it sends
``RelayOpen`` with a fresh channel id on that sandbox's session and waits, for a bound, for the
supervisor's ``RelayStream`` opening with that channel; the two are then bridged. A
``RelayStream`` naming a channel nobody asked for, or asked for another sandbox, is refused.

Every call here is authenticated with the sandbox's token (:mod:`.sandbox_tokens`), never with
the caller's certificate alone; refusals are logged with their reason, never with the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from openshell_core.errors import OpenShellError
from openshell_core.grpc_api import pb
from openshell_core.server.sandbox_tokens import SandboxToken, TokenRefused, TokenSigner, token_of
from openshell_core.server.store import Store

log = logging.getLogger("openshell.server.supervisors")

#: Seconds between heartbeats, each way (told to the supervisor in ``SessionAccepted``).
HEARTBEAT_INTERVAL: Final = 2.0
#: Heartbeats missed in a row before a session counts as gone.
MISSED_HEARTBEATS: Final = 3
#: Seconds a supervisor has to send its hello, and to answer a ``RelayOpen`` with its stream.
HELLO_TIMEOUT: Final = 10.0
RELAY_WAIT: Final = 10.0
#: Largest data frame sent on a relay.
CHUNK: Final = 64 * 1024
#: Store ``meta`` keys of session records: ``supervisor-session:{sandbox_id}``.
_RECORD_PREFIX: Final = "supervisor-session:"


class RelayUnavailable(OpenShellError):
    """No relay to the sandbox could be opened (no live session, or its supervisor never came)."""


@dataclass(frozen=True)
class SessionRecord:
    """What the store keeps of a sandbox's latest supervisor session."""

    sandbox_id: str
    session_id: str
    instance_id: str
    epoch: int
    connected_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "session_id": self.session_id,
                "instance_id": self.instance_id,
                "epoch": self.epoch,
                "connected_at": self.connected_at,
            }
        )


@dataclass(eq=False)
class LiveSession:
    record: SessionRecord
    outbox: asyncio.Queue[pb.GatewayMessage | None] = field(default_factory=asyncio.Queue)
    last_heard: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, message: pb.GatewayMessage) -> None:
        self.outbox.put_nowait(message)

    def end(self) -> None:
        self.ended.set()
        self.outbox.put_nowait(None)


@dataclass(eq=False)
class _Pending:
    sandbox_id: str
    channel_id: str
    #: the gateway's end of the socket pair whose other end the caller holds
    ours: socket.socket
    arrived: asyncio.Future[None]


#: Called with a sandbox id when its session comes (True) or goes (False).
SessionListener = Callable[[str, bool], None]


class SupervisorHub:
    """Live supervisor sessions and the relays opened through them."""

    def __init__(
        self,
        signer: TokenSigner,
        store: Store,
        *,
        known: Callable[[str], bool],
        heartbeat: float = HEARTBEAT_INTERVAL,
        relay_wait: float = RELAY_WAIT,
        stale_owners: bool = False,
    ) -> None:
        """:param stale_owners: the ``stale-supervisor-owner`` fault: a session record this
        process did not make (restored from the store) owns its sandbox, and refuses every
        supervisor that comes back as a duplicate."""
        self.signer = signer
        self._store = store
        self._known = known
        self.heartbeat = heartbeat
        self.relay_wait = relay_wait
        self._sessions: dict[str, LiveSession] = {}
        self._pending: dict[str, _Pending] = {}
        self._listeners: list[SessionListener] = []
        self._stale_owners = stale_owners
        #: session ids this process accepted (the ``stale-supervisor-owner`` fault's test)
        self._accepted: set[str] = set()
        #: sandbox id -> why its supervisor's last hello was refused as a duplicate
        self._refused: dict[str, str] = {}

    # -- what the rest of the gateway asks --

    def listen(self, listener: SessionListener) -> None:
        self._listeners.append(listener)

    def live(self, sandbox_id: str) -> bool:
        session = self._sessions.get(sandbox_id)
        return session is not None and not session.ended.is_set()

    def record(self, sandbox_id: str) -> SessionRecord | None:
        """The latest session record of ``sandbox_id`` (from the store: it outlives the process)."""
        text = self._store.get_meta(_RECORD_PREFIX + sandbox_id)
        if not text:
            return None
        found: Any = json.loads(text)
        return SessionRecord(
            sandbox_id,
            str(found["session_id"]),
            str(found["instance_id"]),
            int(found["epoch"]),
            float(found["connected_at"]),
        )

    def refusal(self, sandbox_id: str) -> str | None:
        """Why the last hello of ``sandbox_id``'s supervisor was refused as a duplicate (None:
        it was not; an accepted session clears it)."""
        return self._refused.get(sandbox_id)

    @property
    def pending_relays(self) -> int:
        return len(self._pending)

    async def open_relay(
        self, sandbox_id: str, *, target: pb.RelayOpen | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to ``sandbox_id``'s supervisor (the SSH target unless ``target`` says).

        :raises RelayUnavailable: no live session, or the supervisor did not open its end within
            :attr:`relay_wait` (the channel is then forgotten and its memory freed).
        """
        session = self._sessions.get(sandbox_id)
        if session is None or session.ended.is_set():
            raise RelayUnavailable(f"sandbox {sandbox_id} has no live supervisor session")
        channel_id = secrets.token_hex(16)
        ours, theirs = socket.socketpair()
        pending = _Pending(sandbox_id, channel_id, ours, asyncio.get_running_loop().create_future())
        self._pending[channel_id] = pending
        message = pb.RelayOpen(channel_id=channel_id)
        if target is not None and target.HasField("tcp"):
            message.tcp.CopyFrom(target.tcp)
        else:
            message.ssh.SetInParent()
        session.send(pb.GatewayMessage(relay_open=message))
        try:
            async with asyncio.timeout(self.relay_wait):
                await pending.arrived
        except BaseException as exc:
            # Whatever ended the wait, the channel is forgotten and both ends closed at once.
            self._pending.pop(channel_id, None)
            ours.close()
            theirs.close()
            if isinstance(exc, TimeoutError):
                log.warning(
                    "relay %s to sandbox %s: the supervisor did not open it within %.0f s; closed",
                    channel_id[:8],
                    sandbox_id,
                    self.relay_wait,
                )
                raise RelayUnavailable(
                    f"the supervisor of sandbox {sandbox_id} did not open the relay within "
                    f"{self.relay_wait:.0f} s"
                ) from None
            raise
        return await asyncio.open_connection(sock=theirs)

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            session.end()
        for pending in list(self._pending.values()):
            pending.ours.close()
        self._pending.clear()

    # -- RPCs --

    def authenticate(
        self, context: grpc.aio.ServicerContext[Any, Any], *, allow_expired: bool = False
    ) -> SandboxToken:
        """The caller's verified sandbox token.

        :raises TokenRefused: no token, or one that does not verify (the caller aborts).
        """
        return self.signer.verify(
            token_of(context.invocation_metadata()), allow_expired=allow_expired
        )

    async def connect(
        self,
        requests: AsyncIterator[pb.SupervisorMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.GatewayMessage]:
        """``ConnectSupervisor``: hello, accepted, then heartbeats and relay requests."""
        where = context.peer()
        try:
            identity = self.authenticate(context)
        except TokenRefused as refused:
            log.warning("supervisor session from %s refused: %s", where, refused.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.message)
        iterator = aiter(requests)
        try:
            first = await asyncio.wait_for(anext(iterator), HELLO_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no SupervisorHello in time")
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        hello = first.hello
        if hello.sandbox_id != identity.sandbox_id:
            log.warning(
                "supervisor session from %s refused: hello for sandbox %s with a token of %s",
                where,
                hello.sandbox_id,
                identity.sandbox_id,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "sandbox token is for another sandbox"
            )
        if not self._known(hello.sandbox_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {hello.sandbox_id} not found")
        owner = self._stale_owner(hello.sandbox_id)
        if owner is not None:
            why = (
                f"sandbox {hello.sandbox_id} already has a supervisor session ({owner.session_id}, "
                f"instance {owner.instance_id}, epoch {owner.epoch})"
            )
            self._refused[hello.sandbox_id] = why
            log.warning("supervisor session from %s refused as a duplicate: %s", where, why)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, why)
        session = self._register(hello)
        accepted = pb.SessionAccepted(session_id=session.record.session_id)
        accepted.heartbeat_interval.FromMilliseconds(int(self.heartbeat * 1000))
        yield pb.GatewayMessage(session_accepted=accepted)
        reading = asyncio.create_task(self._read_session(iterator, session))
        beating = asyncio.create_task(self._beat(session))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reading.cancel()
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reading, beating, return_exceptions=True)
            self._unregister(session)

    async def relay(
        self, requests: AsyncIterator[pb.RelayFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.RelayFrame]:
        """``RelayStream``: the supervisor's end of one channel the gateway asked for."""
        where = context.peer()
        try:
            identity = self.authenticate(context)
        except TokenRefused as refused:
            log.warning("relay stream from %s refused: %s", where, refused.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.message)
        iterator = aiter(requests)
        try:
            first = await asyncio.wait_for(anext(iterator), HELLO_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no RelayInit in time")
        channel_id = first.init.channel_id if first.HasField("init") else ""
        pending = self._pending.get(channel_id)
        if pending is None or pending.sandbox_id != identity.sandbox_id:
            log.warning(
                "relay stream from %s (sandbox %s) refused: no relay was asked for on that channel",
                where,
                identity.sandbox_id,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "no relay was asked for on this channel"
            )
        del self._pending[channel_id]
        if pending.arrived.done():  # the gateway gave up on it meanwhile
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the relay was given up")
        pending.arrived.set_result(None)
        reader, writer = await asyncio.open_connection(sock=pending.ours)
        inbound = asyncio.create_task(frames_to(iterator, writer))
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                yield pb.RelayFrame(data=data)
            # The gateway's side is done sending: an empty data frame says so (ending the call
            # would cut off what the supervisor still sends), then the supervisor's side ends.
            yield pb.RelayFrame(data=b"")
            await inbound
        finally:
            inbound.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inbound
            writer.close()

    # -- sessions --

    def _stale_owner(self, sandbox_id: str) -> SessionRecord | None:
        """The ``stale-supervisor-owner`` fault: the stored record of a session this process never
        accepted (one from before its start), taken for a live owner."""
        if not self._stale_owners:
            return None
        stored = self.record(sandbox_id)
        if stored is None or stored.session_id in self._accepted:
            return None
        return stored

    def _register(self, hello: pb.SupervisorHello) -> LiveSession:
        record = SessionRecord(
            sandbox_id=hello.sandbox_id,
            session_id=secrets.token_hex(8),
            instance_id=hello.instance_id,
            epoch=int(hello.connection_epoch),
            connected_at=time.time(),
        )
        before = self._sessions.get(hello.sandbox_id)
        if before is not None:
            # The newest session wins, whatever the old one's state: a supervisor that came back
            # is the one to talk to, and a half-dead stream must not lock it out.
            log.info(
                "sandbox %s: supervisor session %s (instance %s, epoch %d) replaces %s "
                "(instance %s, epoch %d)",
                record.sandbox_id,
                record.session_id,
                record.instance_id,
                record.epoch,
                before.record.session_id,
                before.record.instance_id,
                before.record.epoch,
            )
            before.end()
        else:
            log.info(
                "sandbox %s: supervisor session %s (instance %s, epoch %d) connected",
                record.sandbox_id,
                record.session_id,
                record.instance_id,
                record.epoch,
            )
        session = LiveSession(record)
        self._sessions[record.sandbox_id] = session
        self._accepted.add(record.session_id)
        self._refused.pop(record.sandbox_id, None)
        self._store.set_meta(_RECORD_PREFIX + record.sandbox_id, record.to_json())
        self._tell(record.sandbox_id, True)
        return session

    def _unregister(self, session: LiveSession) -> None:
        session.ended.set()
        sandbox_id = session.record.sandbox_id
        if self._sessions.get(sandbox_id) is session:
            del self._sessions[sandbox_id]
            log.info(
                "sandbox %s: supervisor session %s ended", sandbox_id, session.record.session_id
            )
            self._tell(sandbox_id, False)

    def _tell(self, sandbox_id: str, live: bool) -> None:
        for listener in self._listeners:
            try:
                listener(sandbox_id, live)
            except Exception:
                log.exception("session listener failed")

    async def _read_session(
        self, iterator: AsyncIterator[pb.SupervisorMessage], session: LiveSession
    ) -> None:
        try:
            async for message in iterator:
                session.last_heard = time.monotonic()
                if message.HasField("relay_open_result") and not message.relay_open_result.success:
                    self._fail_pending(message.relay_open_result.channel_id)
        except (grpc.RpcError, asyncio.CancelledError, Exception):
            pass
        finally:
            session.end()

    def _fail_pending(self, channel_id: str) -> None:
        pending = self._pending.pop(channel_id, None)
        if pending is not None:
            pending.ours.close()
            if not pending.arrived.done():
                pending.arrived.set_exception(
                    RelayUnavailable(f"the supervisor refused relay {channel_id[:8]}")
                )

    async def _beat(self, session: LiveSession) -> None:
        while not session.ended.is_set():
            await asyncio.sleep(self.heartbeat)
            silent = time.monotonic() - session.last_heard
            if silent > self.heartbeat * MISSED_HEARTBEATS:
                log.warning(
                    "sandbox %s: supervisor session %s silent for %.1f s; dropped",
                    session.record.sandbox_id,
                    session.record.session_id,
                    silent,
                )
                session.end()
                return
            session.send(pb.GatewayMessage(heartbeat=pb.GatewayHeartbeat()))


async def frames_to(frames: AsyncIterator[Any], writer: asyncio.StreamWriter) -> None:
    """Write the data of ``frames`` (``RelayFrame`` or ``TcpForwardFrame``: both carry ``data``)
    to ``writer``; half-close it when they end (the stream ends, or an empty data frame)."""
    try:
        async for frame in frames:
            if frame.HasField("data") and frame.data:
                writer.write(frame.data)
                await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
