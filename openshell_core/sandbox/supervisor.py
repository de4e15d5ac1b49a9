"""The in-sandbox supervisor: port 2222, the NSSH1 gate, then SSH or a command.

Every connection must open with a valid NSSH1 preface (``OK``/``ERR``). After ``OK`` the first
bytes choose the mode (see :mod:`openshell_core.wire.exec1`): an SSH banner is relayed to a
fresh ``sshd -i`` through pipes, ``EXEC1`` runs one command and answers frames, ``OSRS1`` opens or
resumes a resumable stream (:mod:`openshell_core.wire.osrs1.stream`): its ``sshd -i`` outlives the
connection that started it, so a live SSH session survives a gateway restart. The mode table is
:attr:`Supervisor.modes`, keyed by the first four bytes.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from openshell_core.sandbox import sshd
from openshell_core.wire import contract
from openshell_core.wire.exec1 import (
    EXEC_MAGIC,
    MAX_EXEC_REQUEST,
    MAX_FRAME,
    MODE_PROBE,
    RESUME_MAGIC,
    SSH_MAGIC,
    ExecRequest,
    FrameType,
    encode_frame,
    exit_frame,
)
from openshell_core.wire.nssh1 import (
    ERR_LINE,
    OK_LINE,
    SKEW_SECONDS,
    PrefaceVerifier,
    is_valid_secret,
    read_line_async,
)
from openshell_core.wire.osrs1.buffer import BUFFER_LIMIT
from openshell_core.wire.osrs1.end import Detach, StreamEnd
from openshell_core.wire.osrs1.errors import OffsetOutOfRange, StreamError, StreamProtocolError
from openshell_core.wire.osrs1.frames import DEFAULT_LIVENESS, Liveness
from openshell_core.wire.osrs1.lines import (
    OpenRequest,
    Refusal,
    Refused,
    Resumed,
    ResumeRequest,
    Ticket,
    judge_resume,
    new_stream,
    parse_request,
    read_line,
)
from openshell_core.wire.osrs1.stream import StreamState
from openshell_core.wire.relay import close_writer, relay

log = logging.getLogger("openshell.sandbox")

SECRET_ENV: Final = contract.HANDSHAKE_SECRET_ENV
SKEW_ENV: Final = contract.HANDSHAKE_SKEW_ENV
LISTEN_ENV: Final = contract.SSH_LISTEN_ENV
HOST_KEY_ENV: Final = contract.SSH_HOST_KEY_ENV
AUTHORIZED_KEYS_ENV: Final = contract.AUTHORIZED_KEYS_ENV
#: Never handed to anything the supervisor starts.
SECRET_VARIABLES: Final = frozenset(contract.SECRET_ENV_NAMES)
DEFAULT_LISTEN: Final = f"0.0.0.0:{contract.SUPERVISOR_PORT}"
DEFAULT_WORKDIR: Final = contract.WORKSPACE_DIR
#: Seconds a connection may take to send its preface, and then its first bytes.
PREFACE_TIMEOUT: Final = 10.0
MODE_TIMEOUT: Final = 60.0
#: Seconds a child gets between SIGTERM and SIGKILL when the supervisor stops.
STOP_GRACE: Final = 2.0
#: Resumable streams held at once (each keeps an sshd and up to a buffer of its output).
MAX_STREAMS: Final = 64
#: A detached stream is kept this much longer than its opener said it would try to resume: the
#: two ends notice a break at different times (up to the liveness bound apart).
DETACHED_GRACE: Final = 10.0


@dataclass(frozen=True)
class Caller:
    """Who a connection is: the session token of its NSSH1 preface, and its address (for logs)."""

    token: str = field(repr=False)
    where: str


Mode = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter, Caller], Awaitable[None]]


class ConfigError(ValueError):
    """The container's environment does not let the supervisor start."""


@dataclass(frozen=True)
class SupervisorConfig:
    secret: str = field(repr=False)
    host: str = "0.0.0.0"
    port: int = contract.SUPERVISOR_PORT
    skew: float = SKEW_SECONDS
    #: The environment children get: the container's, minus the secrets.
    child_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    workdir: str = DEFAULT_WORKDIR
    #: OpenSSH private key (empty: one is made at start, and it changes with the container).
    host_key: str = field(default="", repr=False)
    #: ``authorized_keys`` lines, newline separated.
    authorized_keys: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SupervisorConfig:
        """:raises ConfigError: no secret, or an unreadable skew or listen address."""
        secret = env.get(SECRET_ENV, "").strip()
        if not secret:
            raise ConfigError(f"{SECRET_ENV} is required when SSH is enabled")
        if not is_valid_secret(secret):
            log.warning("%s is not 64 lowercase hex characters; using it anyway", SECRET_ENV)
        try:
            skew = float(env.get(SKEW_ENV, "") or SKEW_SECONDS)
        except ValueError:
            raise ConfigError(f"{SKEW_ENV} is not a number: {env[SKEW_ENV]!r}") from None
        host, port = parse_listen(env.get(LISTEN_ENV, "") or DEFAULT_LISTEN)
        child_env = {k: v for k, v in env.items() if k not in SECRET_VARIABLES}
        return cls(
            secret=secret,
            host=host,
            port=port,
            skew=skew,
            child_env=child_env,
            host_key=env.get(HOST_KEY_ENV, ""),
            authorized_keys=env.get(AUTHORIZED_KEYS_ENV, ""),
        )


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{LISTEN_ENV} must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class _Children:
    """Processes the supervisor started, so that a stop can end them all."""

    running: set[asyncio.subprocess.Process] = field(default_factory=set)

    async def stop_all(self) -> None:
        for process in list(self.running):
            _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in self.running), return_exceptions=True),
                STOP_GRACE,
            )
        for process in list(self.running):
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Signal the child's whole session (each child leads its own)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


@dataclass(eq=False)
class _HeldStream:
    """A resumable stream: its sshd, its end of the stream, and the tunnel it is attached to."""

    ticket: Ticket
    end: StreamEnd
    process: asyncio.subprocess.Process
    #: Seconds it is kept while detached.
    keep_for: float
    writer: asyncio.StreamWriter | None = None
    expiry: asyncio.TimerHandle | None = None


class Supervisor:
    """Serves port 2222 until :meth:`stop`.

    ``ssh_argv`` is what serves one SSH connection on stdin/stdout (default ``sshd -i``; tests
    give a stand-in); ``liveness``, ``buffer_limit``, ``max_streams`` and ``detached_grace`` are
    the resumable streams' bounds.
    """

    def __init__(
        self,
        config: SupervisorConfig,
        files: sshd.SshdFiles | None = None,
        *,
        ssh_argv: Sequence[str] | None = None,
        liveness: Liveness = DEFAULT_LIVENESS,
        buffer_limit: int = BUFFER_LIMIT,
        max_streams: int = MAX_STREAMS,
        detached_grace: float = DETACHED_GRACE,
    ) -> None:
        self.config = config
        self.files = files or sshd.SshdFiles()
        self.ssh_argv = list(ssh_argv) if ssh_argv is not None else sshd.sshd_argv(self.files)
        self.liveness = liveness
        self.buffer_limit = buffer_limit
        self.max_streams = max_streams
        self.detached_grace = detached_grace
        self.verifier = PrefaceVerifier(config.secret, skew=config.skew)
        self.children = _Children()
        self.modes: dict[bytes, Mode] = {
            SSH_MAGIC: self._serve_ssh,
            EXEC_MAGIC[:MODE_PROBE]: self._serve_exec,
            RESUME_MAGIC[:MODE_PROBE]: self._serve_resumable,
        }
        self.streams: dict[str, _HeldStream] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._endings: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True
        )
        address = self._server.sockets[0].getsockname()
        log.info("supervisor listening on %s:%d", address[0], address[1])
        return str(address[0]), int(address[1])

    async def stop(self) -> None:
        """Stop listening, end every child and connection.

        Attached resumable streams are told first (an ERROR frame), so their ssh-proxy ends the
        session at once instead of trying to resume a stream that is about to be gone.
        """
        if self._server is not None:
            self._server.close()
        await asyncio.gather(
            *(
                held.end.fail(held.writer, "the sandbox is stopping")
                for held in self.streams.values()
            )
        )
        await self.children.stop_all()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for held in list(self.streams.values()):
            await self._finish(held)
        for task in list(self._endings):
            task.cancel()
        await asyncio.gather(*self._endings, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            token = await self._handshake(reader, writer, where)
            if token is not None:
                await self._dispatch(reader, writer, Caller(token, where))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection from %s failed", where)
        finally:
            if task is not None:
                self._connections.discard(task)
            await close_writer(writer)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> str | None:
        """The session token of a verified preface (answered ``OK``); None when refused."""
        try:
            line: bytes | None = await asyncio.wait_for(read_line_async(reader), PREFACE_TIMEOUT)
        except TimeoutError:
            line = None
        if line == b"":
            # A port probe (a readiness check connects and leaves): not a handshake attempt, and
            # it must not look like one in the log people grep for failures.
            log.debug("connection from %s closed before sending anything", where)
            return None
        verdict = self.verifier.verify(line or b"")
        if not verdict.accepted:
            reason = verdict.value if line is not None else "no preface in time"
            # The exact words are what users grep for in `docker logs` (upstream's message).
            log.warning("SSH connection: handshake verification failed (%s) from %s", reason, where)
            writer.write(ERR_LINE)
            await writer.drain()
            return None
        writer.write(OK_LINE)
        await writer.drain()
        assert line is not None  # accepted
        return line.decode("ascii").split(" ")[1]

    async def _dispatch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caller: Caller
    ) -> None:
        try:
            probe = await asyncio.wait_for(reader.readexactly(MODE_PROBE), MODE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError):
            return
        mode = self.modes.get(probe)
        if mode is None:
            log.warning("connection from %s: unknown mode %r; closing", caller.where, probe)
            return
        await mode(probe, reader, writer, caller)

    # -- SSH -------------------------------------------------------------------------------

    async def _start_sshd(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self.ssh_argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=dict(self.config.child_env),
            start_new_session=True,
        )
        self.children.running.add(process)
        return process

    async def _end_sshd(self, process: asyncio.subprocess.Process) -> None:
        _signal_group(process, signal.SIGHUP)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE)
        _signal_group(process, signal.SIGKILL)
        self.children.running.discard(process)

    async def _serve_ssh(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        process = await self._start_sshd()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(probe)  # the banner's first bytes, already read
            await relay(reader, writer, process.stdout, process.stdin)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE)
        finally:
            await self._end_sshd(process)

    # -- OSRS1 -----------------------------------------------------------------------------

    async def _serve_resumable(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        line = probe + await read_line(reader, PREFACE_TIMEOUT)
        try:
            request = parse_request(line)
        except StreamProtocolError as exc:
            log.warning("OSRS1 request from %s refused: %s", caller.where, exc.message)
            await _reply(writer, Refused(Refusal.MALFORMED, exc.message).encode())
            return
        if isinstance(request, OpenRequest):
            await self._open_stream(request, reader, writer, caller)
        else:
            await self._resume_stream(request, reader, writer, caller)

    async def _open_stream(
        self,
        request: OpenRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        if len(self.streams) >= self.max_streams:
            log.warning(
                "OSRS1 open from %s refused: %d streams held", caller.where, self.max_streams
            )
            await _reply(writer, Refused(Refusal.LIMIT, "too many resumable streams").encode())
            return
        process = await self._start_sshd()
        assert process.stdin is not None and process.stdout is not None
        opened = new_stream()
        end = StreamEnd(
            StreamState(self.buffer_limit),
            process.stdout,
            process.stdin,
            # Complete once everything sshd wrote, its end included, was acknowledged; or once
            # the peer's input ended (ssh went away) and sshd has finished too: nobody will read
            # the rest.
            done=lambda state: state.out.fin_acked or (state.peer_finished and state.out.finished),
            liveness=self.liveness,
        )
        held = _HeldStream(
            Ticket(opened.stream_id, caller.token, opened.secret),
            end,
            process,
            keep_for=request.resume_timeout + self.detached_grace,
        )
        self.streams[opened.stream_id] = held
        end.start()
        log.info(
            "resumable stream %s opened from %s (kept %g s when detached)",
            opened.stream_id,
            caller.where,
            held.keep_for,
        )
        await self._run_attachment(held, reader, writer, 0, opened.encode())

    async def _resume_stream(
        self,
        request: ResumeRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        held = self.streams.get(request.stream_id)
        alive = held is not None and held.end.alive()
        verdict = judge_resume(held.ticket if held else None, caller.token, request, alive=alive)
        if verdict is None and held is not None:
            self._cancel_expiry(held)
            if held.end.attached:
                log.info(
                    "resumable stream %s: its tunnel went silent; dropping it for the new one",
                    request.stream_id,
                )
                await held.end.drop()
            if held.end.attached:  # another resume got in while the old tunnel was dropped
                verdict = Refused(Refusal.BUSY, "the stream is attached to a live tunnel")
            else:
                try:
                    held.end.state.check_resume(request.offset)
                except OffsetOutOfRange as exc:
                    verdict = Refused(Refusal.OFFSET, exc.message)
        if verdict is not None:
            log.warning(
                "resumable stream %s: resume from %s refused (%s: %s)",
                request.stream_id,
                caller.where,
                verdict.code.value,
                verdict.message,
            )
            await _reply(writer, verdict.encode())
            if verdict.code is Refusal.OFFSET and held is not None:
                await self._finish(held)  # its peer fell out of the buffer: it cannot go on
            return
        assert held is not None
        log.info("resumable stream %s resumed from %s", request.stream_id, caller.where)
        reply = Resumed(held.end.state.received).encode()
        await self._run_attachment(held, reader, writer, request.offset, reply)

    async def _run_attachment(
        self,
        held: _HeldStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_received: int,
        reply: bytes,
    ) -> None:
        """Send the reply, run the stream over this connection, then keep or end the stream.

        Nothing is awaited between the caller's checks and the attach, so no other resume can
        come in between.
        """
        stream_id = held.ticket.stream_id
        held.writer = writer
        outcome = Detach.BROKEN
        try:
            writer.write(reply)  # flushed with the first frames
            outcome = await held.end.attach(reader, writer, peer_received)
        except StreamError as exc:
            log.warning("resumable stream %s ended: %s", stream_id, exc.message)
            await self._finish(held)
            return
        except OSError:
            pass
        finally:
            if held.writer is writer:
                held.writer = None
        if outcome is Detach.COMPLETE:
            log.info("resumable stream %s complete", stream_id)
            await self._finish(held)
        elif outcome is not Detach.DROPPED and held.end.state.peer_finished:
            # The peer's input ended (ssh went away) and it never resumes after that.
            log.info("resumable stream %s complete (its peer had finished)", stream_id)
            await self._finish(held)
        elif outcome is not Detach.DROPPED and self.streams.get(stream_id) is held:
            log.info(
                "resumable stream %s detached (%s); kept for %g s",
                stream_id,
                outcome.value,
                held.keep_for,
            )
            held.expiry = asyncio.get_running_loop().call_later(held.keep_for, self._expire, held)

    def _cancel_expiry(self, held: _HeldStream) -> None:
        if held.expiry is not None:
            held.expiry.cancel()
            held.expiry = None

    def _expire(self, held: _HeldStream) -> None:
        log.info(
            "resumable stream %s expired after %g s detached; ending its sshd",
            held.ticket.stream_id,
            held.keep_for,
        )
        task = asyncio.ensure_future(self._finish(held))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def _finish(self, held: _HeldStream) -> None:
        """Forget the stream and end its sshd."""
        if self.streams.get(held.ticket.stream_id) is held:
            del self.streams[held.ticket.stream_id]
        self._cancel_expiry(held)
        await held.end.close()
        await self._end_sshd(held.process)

    # -- EXEC1 -----------------------------------------------------------------------------

    async def _serve_exec(
        self,
        probe: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        line = await _read_request_line(probe, reader)
        try:
            request = ExecRequest.decode(line)
        except ValueError as exc:
            log.warning("EXEC1 refused: %s", exc)
            writer.write(encode_frame(FrameType.STDERR, f"{exc}\n".encode()) + exit_frame(2))
            await writer.drain()
            return
        env = {**self.config.child_env, **request.env}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        try:
            process = await asyncio.create_subprocess_exec(
                *request.argv,
                stdin=asyncio.subprocess.PIPE
                if request.stdin is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=request.workdir or self.config.workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            message = f"cannot run {request.argv[0]!r}: {exc.strerror or exc}\n"
            writer.write(encode_frame(FrameType.STDERR, message.encode()) + exit_frame(code))
            await writer.drain()
            return
        self.children.running.add(process)
        try:
            await self._run_exec(process, request, reader, writer)
        finally:
            _signal_group(process, signal.SIGKILL)
            self.children.running.discard(process)

    async def _run_exec(
        self,
        process: asyncio.subprocess.Process,
        request: ExecRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        stdout, stderr = process.stdout, process.stderr
        assert stdout is not None and stderr is not None
        lock = asyncio.Lock()

        async def forward(source: asyncio.StreamReader, kind: FrameType) -> None:
            while data := await source.read(MAX_FRAME):
                async with lock:
                    writer.write(encode_frame(kind, data))
                    await writer.drain()

        async def feed() -> None:
            if process.stdin is None:
                return
            with contextlib.suppress(OSError):
                process.stdin.write(request.stdin or b"")
                await process.stdin.drain()
            process.stdin.close()

        async def hang_up() -> None:
            # Nothing follows the request; end of stream means the caller gave up.
            with contextlib.suppress(OSError):
                while await reader.read(4096):
                    pass

        async def complete() -> int:
            # The command is done when it has exited and its output pipes are closed (as with
            # `docker exec`): a background process that keeps them open keeps the exec open.
            await asyncio.gather(
                forward(stdout, FrameType.STDOUT),
                forward(stderr, FrameType.STDERR),
                feed(),
            )
            return await process.wait()

        work = asyncio.ensure_future(complete())
        watcher = asyncio.ensure_future(hang_up())
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if work not in done:
            log.info("EXEC1 caller went away; killing %s", request.argv[0])
            _signal_group(process, signal.SIGKILL)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return
        code = work.result()  # a failed write re-raises here: the caller is gone
        writer.write(exit_frame(code if code >= 0 else 128 - code))
        await writer.drain()


async def _reply(writer: asyncio.StreamWriter, line: bytes) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(line)
        await writer.drain()


async def _read_request_line(probe: bytes, reader: asyncio.StreamReader) -> bytes:
    """The rest of the request line after the probe bytes (capped; nothing follows it)."""
    data = bytearray(probe)
    while not data.endswith(b"\n") and len(data) <= MAX_EXEC_REQUEST:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
        end = data.find(b"\n")
        if end >= 0:
            del data[end + 1 :]
    return bytes(data)


async def serve(config: SupervisorConfig, files: sshd.SshdFiles | None = None) -> None:
    """Prepare sshd, serve until SIGTERM or SIGINT, then stop everything."""
    files = files or sshd.SshdFiles()
    sshd.prepare(
        files,
        host_key=config.host_key,
        authorized_keys=config.authorized_keys,
        session_env=config.child_env,
    )
    problem = await asyncio.to_thread(sshd.check_config, files)
    if problem:
        log.error("sshd rejects its configuration: %s", problem)
    supervisor = Supervisor(config, files)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await supervisor.start()
    await stopping.wait()
    log.info("stopping")
    await supervisor.stop()
