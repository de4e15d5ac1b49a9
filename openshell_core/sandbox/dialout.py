"""The ``supervisor`` transport, sandbox side: the supervisor dials out to its gateway.

The supervisor holds one ``ConnectSupervisor`` session (mutual TLS with the gateway's client
certificate, and its sandbox token as the bearer credential): a hello with the sandbox id, an
instance id (new with every process) and a connection epoch (one more with every connection),
then heartbeats both ways. When the gateway goes away (the stream ends, or it is silent for three
heartbeats) it dials again after a pause that grows from :data:`FIRST_BACKOFF` by half up to
:data:`MAX_BACKOFF` (see :func:`next_pause`).

Each ``RelayOpen`` is answered by opening a ``RelayStream`` that starts with the channel id. The
SSH target speaks, inside the relay, the same protocol as port 2222 in the ``nssh1`` transport
(the gateway's NSSH1 preface, then the bytes that choose SSH, EXEC1 or OSRS1): the relay is
handed to :meth:`~openshell_core.sandbox.supervisor.Supervisor.serve_connection`, which gives
SSH to a fresh ``sshd -i``. A TCP target is a loopback port of the sandbox, and nothing else.

A token with an expiry is renewed (``RefreshSandboxToken``) once two thirds of its life are
gone; the renewed token is kept in :data:`~openshell_core.wire.contract.SANDBOX_TOKEN_CACHE`
(outside the workspace, kept across container restarts), which is preferred over the one the
sandbox was created with.

This is the one module of the supervisor that needs gRPC (the sandbox image installs it): the
``nssh1`` transport's supervisor stays standard library only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from openshell_core.grpc_api import pb, stub
from openshell_core.sandbox.supervisor import Supervisor
from openshell_core.wire import contract
from openshell_core.wire.relay import close_writer

log = logging.getLogger("openshell.sandbox.dialout")

#: First pause before dialling again, and the most it grows to. A gateway restart takes a few
#: seconds, and each pause is time the sandbox stays unusable after the gateway is back (a pause
#: that doubled to 10 s kept sandboxes waiting that long; one grown to 2 s cost a stop-start
#: a second), while a refused dial costs little; only a gateway away for long
#: (:data:`LONG_AWAY`) is dialled less often, up to :data:`AWAY_BACKOFF`.
FIRST_BACKOFF: Final = 0.1
BACKOFF_FACTOR: Final = 1.5
MAX_BACKOFF: Final = 1.0
LONG_AWAY: Final = 60.0
AWAY_BACKOFF: Final = 10.0
#: Seconds a dial may take until the gateway accepts the session, at first, and the most that
#: grows to (1.5 times after each dial that ran out of it; back to the first once accepted).
#: Without a bound a dial made while the sandbox was off the network (the gateway's network is
#: made again after a kill) waited 10 s for its name lookup, long after the network was back.
FIRST_PATIENCE: Final = 1.5
MAX_PATIENCE: Final = 10.0
#: Milliseconds a name lookup of the gateway may take. Off the network (the gateway's network is
#: made again after a kill) or while the gateway's container is stopped, the engine's DNS passes
#: the name on and no answer comes: gRPC's own bound is 2 minutes (10 s was seen), and a lookup
#: begun just before the gateway came back kept its sandbox waiting out the whole bound (1 s
#: cost a stop-start half a second); the engine answers a name it knows within milliseconds.
DNS_TIMEOUT_MS: Final = 500
#: The channel's own reconnect pauses kept short: with gRPC's (1 s at first) a dial made while
#: the gateway was down waited inside the channel instead of failing, and the session came back
#: 0.47-0.57 s after the gateway listened again (five stop-starts); with these and a first
#: pause of 0.1 s (was 0.2 s), 0.05-0.29 s.
CHANNEL_OPTIONS: Final = (
    ("grpc.dns_ares_query_timeout", DNS_TIMEOUT_MS),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: A session accepted and held this long means the gateway was back: the next loss is a new
#: outage, dialled again from the first pause (a reset only after 30 s let the pause grow over
#: disruptions a few seconds apart).
STEADY: Final = 3.0
#: Heartbeats missed in a row before the gateway counts as gone.
MISSED_HEARTBEATS: Final = 3
CHUNK: Final = 64 * 1024


class DialOutError(ValueError):
    """The sandbox's environment does not let it dial out."""


class _NoAnswer(Exception):
    """A dial that got no session within its patience."""


@dataclass(frozen=True)
class DialOutConfig:
    sandbox_id: str
    endpoint: str
    token: str = field(repr=False)
    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    token_cache: Path = Path(contract.SANDBOX_TOKEN_CACHE)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DialOutConfig:
        missing = [
            name
            for name in (
                contract.SANDBOX_ID_ENV,
                contract.GATEWAY_ENDPOINT_ENV,
                contract.SANDBOX_TOKEN_ENV,
                contract.SUPERVISOR_CA_ENV,
                contract.SUPERVISOR_CERT_ENV,
                contract.SUPERVISOR_KEY_ENV,
            )
            if not env.get(name, "").strip()
        ]
        if missing:
            raise DialOutError(f"the supervisor transport needs {', '.join(missing)}")
        return cls(
            sandbox_id=env[contract.SANDBOX_ID_ENV].strip(),
            endpoint=env[contract.GATEWAY_ENDPOINT_ENV].strip(),
            token=env[contract.SANDBOX_TOKEN_ENV].strip(),
            ca=env[contract.SUPERVISOR_CA_ENV].encode(),
            cert=env[contract.SUPERVISOR_CERT_ENV].encode(),
            key=env[contract.SUPERVISOR_KEY_ENV].encode(),
        )


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a token (0: never), read without verifying; None when unreadable."""
    try:
        payload = token.split(".")[1]
        claims: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None


def next_pause(backoff: float, away: float) -> float:
    """The ceiling of the pause after ``backoff``, for a gateway gone ``away`` seconds."""
    ceiling = AWAY_BACKOFF if away >= LONG_AWAY else MAX_BACKOFF
    return min(max(backoff, FIRST_BACKOFF) * BACKOFF_FACTOR, ceiling)


class DialOut:
    """Holds the supervisor's session to the gateway, forever (until cancelled)."""

    def __init__(self, config: DialOutConfig, supervisor: Supervisor) -> None:
        self.config = config
        self.supervisor = supervisor
        self.instance_id = str(uuid.uuid4())
        self.epoch = 0
        self.token = self._best_token()
        self._relays: set[asyncio.Task[None]] = set()
        self._patience = FIRST_PATIENCE
        #: when the gateway accepted the session being held (None while dialling)
        self._accepted_at: float | None = None

    def _held_steadily(self) -> bool:
        """True when the session just lost had been accepted at least :data:`STEADY` ago."""
        return self._accepted_at is not None and time.monotonic() - self._accepted_at >= STEADY

    def _best_token(self) -> str:
        """The renewed token when one was kept and it is the sandbox's, else the created one."""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            kept = self.config.token_cache.read_text().strip()
            if kept and token_expiry(kept) is not None:
                return kept
        return self.config.token

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def run(self) -> None:
        backoff = FIRST_BACKOFF
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.config.ca,
            private_key=self.config.key,
            certificate_chain=self.config.cert,
        )
        lost_at: float | None = None
        while True:
            self._accepted_at = None
            self.epoch += 1
            try:
                async with grpc.aio.secure_channel(
                    self.config.endpoint,
                    credentials,
                    options=CHANNEL_OPTIONS,
                ) as channel:
                    await self._session(stub(channel))  # type: ignore[arg-type]
                why = "the gateway ended the session"
            except _NoAnswer:
                why = f"no session within {self._patience:.1f} s"
                self._patience = min(self._patience * 1.5, MAX_PATIENCE)
            except grpc.aio.AioRpcError as exc:
                # An answer, if only a refusal: whatever is slow, it is not this dial's way in.
                self._patience = FIRST_PATIENCE
                why = f"{exc.code().name}: {exc.details()}"
                # The gateway was away longer than the token lives: the bootstrap path. The
                # gateway is back, so the new token is tried without the grown pause.
                expired = exc.code() is grpc.StatusCode.UNAUTHENTICATED and self._token_expired()
                if expired and await self._reissue(credentials):
                    backoff = FIRST_BACKOFF
            except (OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            if self._held_steadily():
                backoff, lost_at = FIRST_BACKOFF, None
            lost_at = lost_at or time.monotonic()
            pause = backoff * (0.8 + 0.4 * random.random())
            log.warning(
                "session to the gateway at %s lost (%s); dialling again in %.1f s",
                self.config.endpoint,
                why,
                pause,
            )
            await asyncio.sleep(pause)
            backoff = next_pause(backoff, time.monotonic() - lost_at)

    async def _session(self, api: Any) -> None:
        call = api.ConnectSupervisor(metadata=self._metadata())
        hello = pb.SupervisorHello(
            sandbox_id=self.config.sandbox_id,
            instance_id=self.instance_id,
            connection_epoch=self.epoch,
        )
        try:
            async with asyncio.timeout(self._patience):
                await call.write(pb.SupervisorMessage(hello=hello))
                first = await call.read()
        except TimeoutError:
            call.cancel()
            raise _NoAnswer from None
        if first is grpc.aio.EOF or not first.HasField("session_accepted"):
            reason = "" if first is grpc.aio.EOF else first.session_rejected.reason
            log.warning("the gateway did not accept the session %s", reason)
            return
        accepted = first.session_accepted
        self._accepted_at = time.monotonic()
        self._patience = FIRST_PATIENCE
        interval = accepted.heartbeat_interval.ToTimedelta().total_seconds() or 5.0
        log.info(
            "session %s to the gateway at %s (instance %s, epoch %d)",
            accepted.session_id,
            self.config.endpoint,
            self.instance_id,
            self.epoch,
        )
        heard = [time.monotonic()]
        beating = asyncio.create_task(self._beat(call, interval, heard))
        renewing = asyncio.create_task(self._renew(api))
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                heard[0] = time.monotonic()
                if message.HasField("relay_open"):
                    task = asyncio.create_task(self._relay(api, call, message.relay_open))
                    self._relays.add(task)
                    task.add_done_callback(self._relays.discard)
        finally:
            beating.cancel()
            renewing.cancel()
            call.cancel()

    def _token_expired(self) -> bool:
        expiry = token_expiry(self.token) or 0.0
        return bool(expiry) and expiry <= time.time()

    async def _reissue(self, credentials: grpc.ChannelCredentials) -> bool:
        """Exchange the expired token for a new one (``IssueSandboxToken``); False when the
        gateway refused."""
        try:
            async with grpc.aio.secure_channel(self.config.endpoint, credentials) as channel:
                api: Any = stub(channel)  # type: ignore[arg-type]
                response = await api.IssueSandboxToken(
                    pb.IssueSandboxTokenRequest(), metadata=self._metadata(), timeout=10
                )
        except grpc.aio.AioRpcError as exc:
            log.warning("the expired sandbox token was not exchanged: %s", exc.code().name)
            return False
        self.token = response.token
        self._keep_token()
        log.info("sandbox token expired while the gateway was away; a new one was issued")
        return True

    async def _beat(self, call: Any, interval: float, heard: list[float]) -> None:
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - heard[0] > interval * MISSED_HEARTBEATS:
                log.warning("the gateway is silent; ending the session")
                call.cancel()
                return
            await call.write(pb.SupervisorMessage(heartbeat=pb.SupervisorHeartbeat()))

    async def _renew(self, api: Any) -> None:
        """Renew the token before it expires (never, for a token without expiry)."""
        while True:
            expiry = token_expiry(self.token) or 0.0
            if not expiry:
                return
            now = time.time()
            issued_guess = max(now, expiry - 3600)
            await asyncio.sleep(max(1.0, (expiry - issued_guess) * 2 / 3 if expiry > now else 1.0))
            try:
                response = await api.RefreshSandboxToken(
                    pb.RefreshSandboxTokenRequest(), metadata=self._metadata(), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("token renewal failed: %s", exc.code().name)
                continue
            self.token = response.sandbox_token or response.token
            self._keep_token()
            log.info("sandbox token renewed")

    def _keep_token(self) -> None:
        path = self.config.token_cache
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(self.token + "\n")
            partial.chmod(0o600)
            partial.replace(path)

    async def _relay(self, api: Any, session: Any, opened: pb.RelayOpen) -> None:
        channel = opened.channel_id
        if opened.HasField("tcp") and not contract.is_loopback(opened.tcp.host):
            log.warning(
                "relay %s refused: %s is not a loopback address", channel[:8], opened.tcp.host
            )
            result = pb.RelayOpenResult(
                channel_id=channel, success=False, error="tcp targets must be loopback"
            )
            with contextlib.suppress(Exception):
                await session.write(pb.SupervisorMessage(relay_open_result=result))
            return
        ours: asyncio.StreamReader
        mine: asyncio.StreamWriter
        served: asyncio.Task[None] | None = None
        try:
            if opened.HasField("tcp"):
                ours, mine = await asyncio.open_connection(opened.tcp.host, opened.tcp.port)
            else:
                near, far = socket.socketpair()
                ours, mine = await asyncio.open_connection(sock=near)
                far_reader, far_writer = await asyncio.open_connection(sock=far)
                served = asyncio.create_task(
                    self.supervisor.serve_connection(far_reader, far_writer, f"relay {channel[:8]}")
                )
        except OSError as exc:
            result = pb.RelayOpenResult(channel_id=channel, success=False, error=str(exc))
            with contextlib.suppress(Exception):
                await session.write(pb.SupervisorMessage(relay_open_result=result))
            return
        call = api.RelayStream(_frames(channel, ours), metadata=self._metadata())
        try:
            async for frame in call:
                if frame.HasField("data") and frame.data:
                    mine.write(frame.data)
                    await mine.drain()
                elif frame.HasField("data"):  # the gateway's side is done sending
                    _half_close(mine)
            _half_close(mine)
            if served is not None:
                await served
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.info("relay %s ended: %s", channel[:8], exc)
        finally:
            call.cancel()
            await close_writer(mine)
            if served is not None and not served.done():
                served.cancel()


async def _frames(channel: str, reader: asyncio.StreamReader) -> AsyncIterator[pb.RelayFrame]:
    yield pb.RelayFrame(init=pb.RelayInit(channel_id=channel))
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        yield pb.RelayFrame(data=data)


def _half_close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
