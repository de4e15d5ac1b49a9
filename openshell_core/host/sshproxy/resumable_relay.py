"""The relays ssh-proxy runs over a tunnel: plain (one dial), or resumable over OSRS1."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from openshell_core.errors import OpenShellError
from openshell_core.host.sshproxy.tunnel import (
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    ConnectFailed,
    Dialer,
    Streams,
    Tunnel,
)
from openshell_core.retry import backoff
from openshell_core.wire.osrs1.buffer import BUFFER_LIMIT
from openshell_core.wire.osrs1.end import Detach, StreamEnd
from openshell_core.wire.osrs1.errors import (
    OffsetOutOfRange,
    PeerError,
    StreamError,
    StreamProtocolError,
)
from openshell_core.wire.osrs1.frames import DEFAULT_LIVENESS, Liveness
from openshell_core.wire.osrs1.lines import (
    RESUME_TIMEOUT,
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
from openshell_core.wire.relay import EofPolicy, close_writer, relay

log = logging.getLogger("openshell.sshproxy")


#: A resume attempt follows the last one after 0.2, 0.24, 0.29, ... (times 1.2) up to 2 seconds:
#: a gateway that restarts answers again within a second or so, and a refused attempt is cheap.
RESUME_FIRST_BACKOFF: Final = 0.2


RESUME_BACKOFF_FACTOR: Final = 1.2


RESUME_MAX_BACKOFF: Final = 2.0


#: Seconds the first resume attempt may take to open a tunnel; each that runs out doubles it.
RESUME_FIRST_ATTEMPT_TIMEOUT: Final = 0.25


class TunnelRelay(Protocol):
    """Moves bytes between the local end (ssh's pipes) and tunnels made by ``dial``."""

    async def run(self, local: Streams, dial: Dialer) -> None: ...


class PlainRelay:
    """One tunnel, relayed until the gateway's side ends; a broken tunnel ends the SSH session.

    When stdin ends first the answer is still awaited (TLS cannot pass a half-close on; ssh itself
    never relies on one, and stops this process when it is done).
    """

    async def run(self, local: Streams, dial: Dialer) -> None:
        remote = await dial()
        await relay(local[0], local[1], remote[0], remote[1], a_eof=EofPolicy.WAIT)


class SessionLost(OpenShellError):
    """A resumable SSH session ended before its remote end finished it."""


@dataclass
class ResumableRelay:
    """An OSRS1 stream through the tunnel, resumed through new tunnels when one breaks.

    A break is noticed by the tunnel closing or by its silence (the supervisor pings every
    second). Then ``dial`` is called again (0.2 s apart, growing by a fifth up to 2 s) until a
    new tunnel resumes the stream, for at most ``resume_timeout`` seconds; each break and each
    resume is logged (the resume with how long the stream stalled). A sandbox that does not know
    the stream any more (it restarted) ends the session at once. A sandbox that does not speak
    OSRS1 at all gets a plain session.

    The end of the local input means ssh is gone: it is passed on (so the supervisor ends sshd
    and forgets the stream at once) but never resumed for.
    """

    sandbox_id: str
    token: str = field(repr=False)
    resume_timeout: float = RESUME_TIMEOUT
    liveness: Liveness = DEFAULT_LIVENESS
    buffer_limit: int = BUFFER_LIMIT
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def for_tunnel(
        cls, tunnel: Tunnel, *, resume_timeout: float = RESUME_TIMEOUT
    ) -> ResumableRelay:
        return cls(tunnel.sandbox_id, tunnel.token, resume_timeout=resume_timeout)

    async def run(self, local: Streams, dial: Dialer) -> None:
        """:raises SessionLost: the session could not go on (see the message)."""
        reader, writer = await dial()
        opened = await self._open(reader, writer)
        if opened is None:
            log.warning(
                "sandbox %s does not offer resumable sessions: this one will not survive a "
                "gateway restart",
                self.sandbox_id,
            )
            await PlainRelay().run(local, dial)
            return
        state = StreamState(self.buffer_limit)
        end = StreamEnd(
            state,
            local[0],
            local[1],
            # Done when the sandbox's side ended (and we said we have it all), or when ours did
            # (ssh went away) and the supervisor has that.
            done=lambda stream: stream.peer_fin_acked or stream.out.fin_acked,
            liveness=self.liveness,
            clock=self.clock,
        )
        peer_received, generation = 0, 0
        try:
            while True:
                try:
                    outcome = await end.attach(reader, writer, peer_received)
                except PeerError as exc:
                    raise SessionLost(
                        f"sandbox {self.sandbox_id} ended the SSH session: {exc.message}"
                    ) from exc
                except StreamError as exc:
                    raise SessionLost(f"the SSH session's stream broke: {exc.message}") from exc
                if outcome is Detach.COMPLETE:
                    return
                if state.out.finished or state.peer_finished:
                    # ssh has gone (our input ended), or the sandbox's side has ended and all of
                    # it arrived: nothing is left to resume the session for.
                    log.info("tunnel to sandbox %s closed as the session ended", self.sandbox_id)
                    return
                stalled_since = end.last_heard
                log.warning(
                    "tunnel to sandbox %s broke (%s); reconnecting through the gateway "
                    "(for up to %g s)",
                    self.sandbox_id,
                    outcome.value,
                    self.resume_timeout,
                )
                resumed = await self._resume(dial, opened, state, generation)
                if resumed is None:
                    log.info("ssh went away while the tunnel was down; not resuming")
                    return
                reader, writer, peer_received, generation = resumed
                log.info(
                    "tunnel to sandbox %s resumed after %.1f s",
                    self.sandbox_id,
                    self.clock() - stalled_since,
                )
        finally:
            await end.close()

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Opened | None:
        """The supervisor's OPENED; None when it closed instead (it predates OSRS1)."""
        try:
            writer.write(OpenRequest(self.resume_timeout).encode())
            await writer.drain()
        except OSError:
            pass
        line = await read_line(reader, REPLY_TIMEOUT)
        if not line:
            await close_writer(writer)
            return None
        try:
            reply = parse_reply(line)
        except StreamProtocolError as exc:
            await close_writer(writer)
            raise SessionLost(
                f"sandbox {self.sandbox_id} answered the resumable-session request with "
                f"something else: {exc.message}",
                hint="`--no-resume` opens a plain session",
            ) from exc
        if isinstance(reply, Opened):
            return reply
        await close_writer(writer)
        detail = f"{reply.code.value}: {reply.message}" if isinstance(reply, Refused) else "?"
        raise SessionLost(
            f"sandbox {self.sandbox_id} refused a resumable session ({detail})",
            hint="`--no-resume` opens a plain session",
        )

    async def _resume(
        self, dial: Dialer, opened: Opened, state: StreamState, generation: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, int] | None:
        """A new tunnel on which the stream was resumed, what the supervisor had received, and
        the generation of the resume that worked; None when ssh went away meanwhile.

        :raises SessionLost: the time is up, or the gateway or the sandbox said no for good.
        """
        deadline = self.clock() + self.resume_timeout
        delays = backoff(RESUME_FIRST_BACKOFF, RESUME_BACKOFF_FACTOR, RESUME_MAX_BACKOFF)
        # While a gateway container starts, Docker's port proxy may accept a connection whose
        # way on into the container is not there yet; that SYN is resent only a second later.
        # So an attempt that hangs gives way to a new one, and each may wait twice as long.
        patience = RESUME_FIRST_ATTEMPT_TIMEOUT
        problem = "no attempt made"
        while True:
            if state.out.finished:
                return None
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise SessionLost(
                    f"tunnel to sandbox {self.sandbox_id} could not be resumed within "
                    f"{self.resume_timeout:g} s (last: {problem}); the SSH session is lost",
                    hint="bring the gateway back (`pytest-openshell gateway start`), then "
                    "connect again",
                )
            try:
                reader, writer = await asyncio.wait_for(dial(), min(remaining, patience))
            except ConnectFailed as exc:
                if exc.final:
                    raise SessionLost(
                        f"the gateway refused to resume the tunnel to sandbox "
                        f"{self.sandbox_id}: {exc.message}",
                        hint=exc.hint,
                    ) from exc
                problem = exc.message
            except TimeoutError:
                problem = f"the gateway did not answer within {patience:g} s"
                patience = min(patience * 2, CONNECT_TIMEOUT)
            except OpenShellError as exc:
                problem = exc.message
            else:
                generation += 1
                request = resume_request(opened, self.token, generation, state.received)
                wait = min(REPLY_TIMEOUT, max(1.0, deadline - self.clock()))
                reply = await self._ask(reader, writer, request.encode(), wait)
                if isinstance(reply, Resumed):
                    try:
                        state.check_resume(reply.offset)
                    except OffsetOutOfRange as exc:
                        await close_writer(writer)
                        raise SessionLost(
                            f"sandbox {self.sandbox_id} resumed at an offset this end no longer "
                            f"holds: {exc.message}"
                        ) from exc
                    return reader, writer, reply.offset, generation
                await close_writer(writer)
                problem = self._judge_refusal(reply)
            await self.sleep(min(next(delays), max(0.0, deadline - self.clock())))

    def _judge_refusal(self, reply: Refused | None) -> str:
        """What to retry on (returned as the problem to report); :raises SessionLost: else."""
        if reply is None:
            return "no answer from the sandbox"
        if reply.code is Refusal.BUSY:
            return "the sandbox still holds the old tunnel"
        if reply.code is Refusal.UNKNOWN:
            raise SessionLost(
                f"the SSH session in sandbox {self.sandbox_id} is gone: the sandbox restarted "
                "(or gave the session up) while the tunnel was down",
                hint="connect again for a new session",
            )
        raise SessionLost(
            f"sandbox {self.sandbox_id} refused to resume the SSH session "
            f"({reply.code.value}: {reply.message})"
        )

    async def _ask(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        timeout: float,
    ) -> Resumed | Refused | None:
        """Send a RESUME; the answer, or None when there was none (or a garbled one)."""
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            return None
        line = await read_line(reader, timeout)
        try:
            reply = parse_reply(line) if line else None
        except StreamProtocolError:
            return None
        return reply if isinstance(reply, Resumed | Refused) else None
