"""A resumable session end to end in one process: the real supervisor (with ``cat`` standing in for
``sshd -i``), ssh-proxy's :class:`ResumableRelay`, and between them a gateway stand-in that does
the real NSSH1 handshake (``server.tunnel.connect_sandbox``) and can be killed (connections reset),
frozen (connections kept, nothing relayed: a container that vanished) and started again.

Liveness is shortened (pings every 50 ms, dead after 400 ms) so that silence is noticed quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from openshell_core.errors import OpenShellError
from openshell_core.host.sshproxy.resumable_relay import ResumableRelay, SessionLost
from openshell_core.host.sshproxy.tunnel import (
    ConnectFailed,
    Streams,
    connect_request,
    parse_status,
    read_response_head,
)
from openshell_core.sandbox.supervisor import Supervisor, SupervisorConfig
from openshell_core.server.tunnel import (
    TunnelTarget,
    connect_sandbox,
    parse_request_head,
    status_line,
)
from openshell_core.wire.nssh1 import generate_secret
from openshell_core.wire.osrs1.end import Detach, StreamEnd
from openshell_core.wire.osrs1.frames import Liveness
from openshell_core.wire.osrs1.lines import (
    Opened,
    OpenRequest,
    Refusal,
    Refused,
    Resumed,
    parse_reply,
    read_line,
    resume_request,
)
from openshell_core.wire.osrs1.stream import StreamState
from openshell_core.wire.relay import close_writer

SECRET = generate_secret()
TOKEN = "session-token-1"
FAST = Liveness(ping_every=0.05, dead_after=0.4)
CAT = shutil.which("cat") or "/bin/cat"


@dataclass
class Link:
    """One relayed tunnel: the user's side and the sandbox's side."""

    user: Streams
    sandbox: Streams
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self) -> None:
        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()

        self.pumps = [
            asyncio.ensure_future(pump(self.user[0], self.sandbox[1])),
            asyncio.ensure_future(pump(self.sandbox[0], self.user[1])),
        ]
        await asyncio.wait(self.pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)

    def freeze(self) -> None:
        """Relay nothing more, close nothing: what a killed container's connections look like."""
        for task in self.pumps:
            task.cancel()

    def reset(self) -> None:
        for _, writer in (self.user, self.sandbox):
            writer.transport.abort()


@dataclass
class Gateway:
    """CONNECT, the NSSH1 handshake with the session token, then a relay that can fail."""

    sandbox_port: int
    port: int = 0
    refuse: int = 0  # answer CONNECTs with this status instead
    hang: int = 0  # leave this many CONNECTs unanswered (until the client lets go)
    let_go: int = 0  # unanswered CONNECTs the client closed
    server: asyncio.Server | None = None
    links: list[Link] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    connects: int = 0

    async def start(self) -> Gateway:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.connects += 1
            if self.hang:
                self.hang -= 1
                await reader.read()  # nothing is answered; returns when the client closes
                self.let_go += 1
                await close_writer(writer)
                return
            if self.refuse:
                writer.write(status_line(self.refuse, "refused"))
                await writer.drain()
                await close_writer(writer)
                return
            token = parse_request_head(head).headers["x-sandbox-token"]
            target = TunnelTarget("sbx", "127.0.0.1", self.sandbox_port, SECRET, token)
            upstream = await connect_sandbox(target, delays=(0,))
            try:
                writer.write(status_line(200, "Connection Established"))
                await writer.drain()
            except OSError:  # the client gave up on this attempt meanwhile
                await close_writer(upstream[1])
                raise
            link = Link((reader, writer), upstream)
            self.links.append(link)
            await link.run()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)

    def _stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def kill(self) -> None:
        """Gone, with its connections reset."""
        self._stop_listening()
        for link in self.links:
            link.reset()

    def freeze(self) -> None:
        """Gone, without a word on its open connections."""
        self._stop_listening()
        for link in self.links:
            link.freeze()

    async def close(self) -> None:
        self.kill()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def dial(self) -> Streams:
        """What GatewayTunnel.open does, over plain TCP."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            raise OpenShellError(f"cannot reach gateway: {exc}") from exc
        try:
            writer.write(connect_request("gateway", "sbx", TOKEN))
            await writer.drain()
            status = parse_status(await read_response_head(reader))
        except BaseException:  # cancelled: the attempt took too long
            writer.close()
            raise
        if status != 200:
            await close_writer(writer)
            raise ConnectFailed(status)
        return reader, writer


async def start_supervisor(**options: object) -> Supervisor:
    config = SupervisorConfig(secret=SECRET, host="127.0.0.1", port=0)
    supervisor = Supervisor(config, ssh_argv=[CAT], liveness=FAST, **options)  # type: ignore[arg-type]
    await supervisor.start()
    return supervisor


def port_of(supervisor: Supervisor) -> int:
    assert supervisor._server is not None
    return int(supervisor._server.sockets[0].getsockname()[1])


async def local_pair() -> tuple[Streams, Streams]:
    """ssh's pipes: the proxy's side and the user's (a socket pair, so EOF passes)."""
    one, other = socket.socketpair()
    return await asyncio.open_connection(sock=one), await asyncio.open_connection(sock=other)


@dataclass
class Session:
    """A user writing numbered lines into a resumable session and reading the echo back."""

    relay: ResumableRelay
    user: Streams
    proxy: asyncio.Task[None]
    sent: bytearray = field(default_factory=bytearray)
    got: bytearray = field(default_factory=bytearray)
    reading: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, gateway: Gateway, **options: object) -> Session:
        relay = ResumableRelay("sbx", TOKEN, liveness=FAST, **options)  # type: ignore[arg-type]
        proxy_side, user = await local_pair()
        session = cls(relay, user, asyncio.ensure_future(relay.run(proxy_side, gateway.dial)))
        session.reading = asyncio.ensure_future(session._read())
        return session

    async def _read(self) -> None:
        while data := await self.user[0].read(65536):
            self.got += data

    async def send(self, count: int, start: int = 0) -> None:
        for number in range(start, start + count):
            line = f"line {number:05d}\n".encode()
            self.user[1].write(line)
            self.sent += line
            await self.user[1].drain()
            await asyncio.sleep(0.001)

    async def echoed(self, timeout: float = 10) -> None:
        """Wait until everything sent has come back."""
        async with asyncio.timeout(timeout):
            while len(self.got) < len(self.sent) and not self.proxy.done():
                await asyncio.sleep(0.01)
        assert bytes(self.got) == bytes(self.sent)

    async def finish(self, timeout: float = 10) -> None:
        """End the input; the stand-in exits, and the session ends cleanly."""
        self.user[1].write_eof()
        async with asyncio.timeout(timeout):
            await self.proxy
            assert self.reading is not None
            await self.reading
        self.user[1].close()

    async def close(self) -> None:
        """Whatever happened, leave nothing open."""
        for task in (self.proxy, self.reading):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(self.proxy, *([self.reading] if self.reading else []),
                             return_exceptions=True)  # fmt: skip
        await close_writer(self.user[1])


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def close_all(sessions: list[Session | None]) -> None:
    for session in sessions:
        if session is not None:
            await session.close()


@contextlib.asynccontextmanager
async def rig(
    **supervisor_options: object,
) -> AsyncIterator[tuple[Supervisor, Gateway, list[Session | None]]]:
    """A supervisor, a gateway stand-in in front of it, and a list for the sessions a test opens:
    all closed afterwards, whatever happened."""
    supervisor = await start_supervisor(**supervisor_options)
    gateway = await Gateway(port_of(supervisor)).start()
    sessions: list[Session | None] = [None]
    try:
        yield supervisor, gateway, sessions
    finally:
        await close_all(sessions)
        await gateway.close()
        await supervisor.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_a_session_survives_a_killed_and_a_silently_vanished_gateway_byte_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with rig() as (supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway)
            await session.send(200)
            await session.echoed()
            gateway.kill()
            await session.send(100, 200)  # written while the gateway is down
            await gateway.start()
            await session.echoed()
            gateway.freeze()
            await session.send(100, 300)
            await gateway.start()
            await session.echoed()
            await session.finish()
            await wait_until(lambda: not supervisor.resumable.streams)

    run(scenario)
    proxy_lines = [r.getMessage() for r in caplog.records if r.name == "openshell.sshproxy"]
    assert sum("broke" in line and "reconnecting through the gateway" in line
               for line in proxy_lines) == 2  # fmt: skip
    assert sum("resumed after" in line for line in proxy_lines) == 2
    assert "resumable stream" in caplog.text and "complete" in caplog.text


def test_a_resume_attempt_that_hangs_gives_way_to_a_new_one() -> None:
    """What Docker's port proxy does while a gateway container starts: it takes the connection,
    and the way on into the container is resent only a second later."""

    async def scenario() -> None:
        async with rig() as (_supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway)
            await session.send(20)
            await session.echoed()
            gateway.kill()
            gateway.hang = 1
            await gateway.start()
            await session.send(20, 20)
            await session.echoed(timeout=5)  # an attempt waiting for ever would take longer
            await wait_until(lambda: gateway.let_go == 1)
            await session.finish()

    run(scenario)


def test_a_resume_while_the_old_tunnel_still_looks_alive_is_retried_until_it_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with rig() as (_supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway)
            await session.send(20)
            await session.echoed()
            link = gateway.links[-1]
            link.freeze()
            link.user[1].transport.abort()  # the user's side breaks, the sandbox's stays open
            await session.send(20, 20)
            await session.echoed()
            await session.finish()

    run(scenario)
    assert "refused (busy" in caplog.text or "went silent; dropping it" in caplog.text


def test_a_restarted_sandbox_ends_the_session_at_once_as_an_unknown_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sessions: list[Session | None] = [None]
        first = await start_supervisor()
        gateway = await Gateway(port_of(first)).start()
        second: Supervisor | None = None
        try:
            session = sessions[0] = await Session.open(gateway, resume_timeout=30)
            await session.send(10)
            await session.echoed()
            gateway.freeze()
            second = await start_supervisor()  # the sandbox came back: same secret, no streams
            gateway.sandbox_port = port_of(second)
            await gateway.start()
            async with asyncio.timeout(10):  # far less than the 30 s it would wait for a gateway
                with pytest.raises(SessionLost, match="is gone: the sandbox restarted"):
                    await session.proxy
        finally:
            await close_all(sessions)
            await gateway.close()
            await first.stop()
            if second is not None:
                await second.stop()

    run(scenario)
    assert "refused (unknown-stream" in caplog.text


def test_a_gateway_away_longer_than_the_resume_timeout_ends_the_session() -> None:
    async def scenario() -> None:
        async with rig() as (_supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway, resume_timeout=1.0)
            await session.send(5)
            await session.echoed()
            gateway.kill()
            async with asyncio.timeout(10):
                with pytest.raises(SessionLost, match="could not be resumed within 1 s"):
                    await session.proxy

    run(scenario)


def test_a_revoked_token_ends_the_resume_at_once() -> None:
    async def scenario() -> None:
        async with rig() as (_supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway, resume_timeout=30)
            await session.send(5)
            await session.echoed()
            gateway.refuse = 401
            gateway.kill()
            await gateway.start()
            async with asyncio.timeout(10):
                with pytest.raises(SessionLost, match="status 401"):
                    await session.proxy

    run(scenario)


def test_a_stopping_sandbox_tells_the_attached_session_which_ends_at_once() -> None:
    async def scenario() -> None:
        sessions: list[Session | None] = [None]
        supervisor = await start_supervisor()
        gateway = await Gateway(port_of(supervisor)).start()
        try:
            session = sessions[0] = await Session.open(gateway, resume_timeout=30)
            await session.send(5)
            await session.echoed()
            await supervisor.stop()
            async with asyncio.timeout(10):
                with pytest.raises(SessionLost, match="the sandbox is stopping"):
                    await session.proxy
        finally:
            await close_all(sessions)
            await gateway.close()

    run(scenario)


def test_a_detached_stream_expires_and_its_process_ends() -> None:
    async def scenario() -> None:
        async with rig(detached_grace=0.0) as (supervisor, gateway, sessions):
            session = sessions[0] = await Session.open(gateway, resume_timeout=0.5)
            await session.send(5)
            await session.echoed()
            (held,) = supervisor.resumable.streams.values()
            gateway.kill()
            with contextlib.suppress(SessionLost):
                await asyncio.wait_for(session.proxy, 10)
            await wait_until(lambda: not supervisor.resumable.streams)
            await wait_until(lambda: not supervisor.children.running)
            assert held.process.returncode is not None

    run(scenario)


# -- the supervisor's refusals, through the gateway ------------------------------------------------


async def open_raw(gateway: Gateway) -> tuple[Streams, Opened]:
    streams = await gateway.dial()
    streams[1].write(OpenRequest(30).encode())
    reply = parse_reply(await read_line(streams[0], 10))
    assert isinstance(reply, Opened)
    return streams, reply


async def ask(gateway: Gateway, line: bytes) -> Resumed | Refused | Opened:
    reader, writer = await gateway.dial()
    writer.write(line)
    try:
        return parse_reply(await read_line(reader, 10))
    finally:
        writer.transport.abort()


def test_resumes_with_a_wrong_secret_an_attached_stream_or_an_offset_outside_the_buffer_are_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with rig() as (supervisor, gateway, _sessions):
            (_, writer), opened = await open_raw(gateway)
            forged = Opened(opened.stream_id, generate_secret())
            wrong = await ask(gateway, resume_request(forged, TOKEN, 1, 0).encode())
            busy = await ask(gateway, resume_request(opened, TOKEN, 2, 0).encode())
            writer.transport.abort()
            await wait_until(
                lambda: not supervisor.resumable.streams[opened.stream_id].end.attached
            )
            beyond = await ask(gateway, resume_request(opened, TOKEN, 3, 10**6).encode())
            assert [reply.code for reply in (wrong, busy, beyond)] == [  # type: ignore[union-attr]
                Refusal.REFUSED,
                Refusal.BUSY,
                Refusal.OFFSET,
            ]
            assert (
                opened.stream_id not in supervisor.resumable.streams
            )  # a peer out of the buffer ends it

    run(scenario)
    assert "refused (refused: wrong proof of the stream's secret)" in caplog.text
    assert "refused (busy: the stream is attached to a live tunnel)" in caplog.text
    assert "refused (bad-offset:" in caplog.text


def test_a_stream_cannot_be_resumed_with_another_session_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with rig() as (supervisor, gateway, _sessions):
            (_, writer), opened = await open_raw(gateway)
            writer.transport.abort()
            await wait_until(
                lambda: not supervisor.resumable.streams[opened.stream_id].end.attached
            )
            reader, other = await gateway.dial()
            other.transport.abort()
            # The gateway signs the preface with the CONNECT's token: send another one.
            other_reader, other_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            other_writer.write(connect_request("gateway", "sbx", "another-token"))
            assert parse_status(await read_response_head(other_reader)) == 200
            other_writer.write(resume_request(opened, "another-token", 1, 0).encode())
            reply = parse_reply(await read_line(other_reader, 10))
            other_writer.transport.abort()
            assert isinstance(reply, Refused) and reply.code is Refusal.REFUSED
            assert opened.stream_id in supervisor.resumable.streams  # still there for its own token
            del reader

    run(scenario)
    assert "opened with another session token" in caplog.text


# -- the bound on what one end holds ---------------------------------------------------------------


def test_a_peer_that_stops_acknowledging_throttles_the_local_side_instead_of_growing_memory() -> (
    None
):
    limit, total = 64 * 1024, 1024 * 1024
    payload = bytes(range(256)) * (total // 256)

    async def scenario() -> None:
        (local_reader, local_writer), (_, user_writer) = await local_pair()
        (end_reader, end_writer), (peer_reader, peer_writer) = await local_pair()
        end = StreamEnd(
            StreamState(limit),
            local_reader,
            local_writer,
            done=lambda state: state.out.fin_acked,
            liveness=Liveness(ping_every=0.05, dead_after=30),
        )
        acking = asyncio.Event()
        received = bytearray()
        peer = StreamState()
        peer.attach(0)

        async def the_peer() -> None:
            while data := await peer_reader.read(65536):
                received.extend(peer.feed(data).data)
                if acking.is_set() and (ack := peer.ack_frame()):
                    peer_writer.write(ack)

        async def the_user() -> None:
            user_writer.write(payload)
            await user_writer.drain()
            user_writer.write_eof()

        attached = asyncio.ensure_future(end.attach(end_reader, end_writer, 0))
        peering, writing = asyncio.ensure_future(the_peer()), asyncio.ensure_future(the_user())
        try:
            await wait_until(lambda: end.state.out.room == 0)
            await asyncio.sleep(0.2)
            assert end.state.out.held <= limit
            assert len(received) <= limit
            assert not writing.done()  # the local source is held back, not read into memory
            acking.set()
            peer_writer.write(peer.ack_frame() or b"")
            async with asyncio.timeout(20):
                assert await attached is Detach.COMPLETE
            assert bytes(received) == payload
        finally:
            for task in (attached, peering, writing):
                task.cancel()
            await asyncio.gather(attached, peering, writing, return_exceptions=True)
            await end.close()
            for writer in (user_writer, peer_writer, end_writer):
                await close_writer(writer)

    run(scenario)
