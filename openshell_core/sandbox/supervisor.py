"""The in-sandbox supervisor: port 2222, the NSSH1 gate, then a mode chosen by the first bytes.

Every connection must open with a valid NSSH1 preface (``OK``/``ERR``). After ``OK`` the first
bytes choose the mode (magics in :mod:`openshell_core.wire.exec1`), one module each: an SSH banner
is relayed to a fresh ``sshd -i`` through pipes (:mod:`.ssh_mode`), ``EXEC1`` runs one command and
answers frames (:mod:`.exec_mode`), ``OSRS1`` opens or resumes a resumable stream whose ``sshd -i``
outlives the connection that started it, so a live SSH session survives a gateway restart
(:mod:`.resumable_mode`). The mode table is :attr:`Supervisor.modes`, keyed by the first four
bytes.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from openshell_core.sandbox import sshd
from openshell_core.sandbox.exec_mode import ExecMode
from openshell_core.sandbox.mode import PREFACE_TIMEOUT, Caller, Children, Mode
from openshell_core.sandbox.resumable_mode import DETACHED_GRACE, MAX_STREAMS, ResumableMode
from openshell_core.sandbox.ssh_mode import SshMode
from openshell_core.wire import contract
from openshell_core.wire.exec1 import EXEC_MAGIC, MODE_PROBE, RESUME_MAGIC, SSH_MAGIC
from openshell_core.wire.nssh1 import (
    ERR_LINE,
    OK_LINE,
    SKEW_SECONDS,
    PrefaceVerifier,
    is_valid_secret,
    read_line_async,
)
from openshell_core.wire.osrs1.buffer import BUFFER_LIMIT
from openshell_core.wire.osrs1.frames import DEFAULT_LIVENESS, Liveness
from openshell_core.wire.relay import close_writer

log = logging.getLogger("openshell.sandbox")

SECRET_ENV: Final = contract.HANDSHAKE_SECRET_ENV
SKEW_ENV: Final = contract.HANDSHAKE_SKEW_ENV
LISTEN_ENV: Final = contract.SSH_LISTEN_ENV
HOST_KEY_ENV: Final = contract.SSH_HOST_KEY_ENV
AUTHORIZED_KEYS_ENV: Final = contract.AUTHORIZED_KEYS_ENV
COMMAND_ENV: Final = contract.SANDBOX_COMMAND_ENV
#: Never handed to anything the supervisor starts.
SECRET_VARIABLES: Final = frozenset(contract.SECRET_ENV_NAMES)
DEFAULT_LISTEN: Final = f"0.0.0.0:{contract.SUPERVISOR_PORT}"
DEFAULT_WORKDIR: Final = contract.WORKSPACE_DIR
#: Seconds a connection may take, after its preface, to send the bytes that choose its mode.
MODE_TIMEOUT: Final = 60.0


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
    #: The sandbox's own command, run at every start of the supervisor (empty: none).
    command: tuple[str, ...] = ()

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
            command=parse_command(env.get(COMMAND_ENV, "")),
            secret=secret,
            host=host,
            port=port,
            skew=skew,
            child_env=child_env,
            host_key=env.get(HOST_KEY_ENV, ""),
            authorized_keys=env.get(AUTHORIZED_KEYS_ENV, ""),
        )


def parse_command(text: str) -> tuple[str, ...]:
    """The sandbox's command from its JSON list (empty text: none)."""
    if not text.strip():
        return ()
    try:
        argv = json.loads(text)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"{COMMAND_ENV} must be a non-empty JSON list of strings, not {text!r}")
    return tuple(argv)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{LISTEN_ENV} must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        self.verifier = PrefaceVerifier(config.secret, skew=config.skew)
        self.children = Children()
        argv = list(ssh_argv) if ssh_argv is not None else sshd.sshd_argv(self.files)
        self.ssh = SshMode(argv, config.child_env, self.children)
        self.exec = ExecMode(config.child_env, config.workdir, self.children)
        self.resumable = ResumableMode(
            self.ssh,
            liveness=liveness,
            buffer_limit=buffer_limit,
            max_streams=max_streams,
            detached_grace=detached_grace,
        )
        self.modes: dict[bytes, Mode] = {
            SSH_MAGIC: self.ssh.serve,
            EXEC_MAGIC[:MODE_PROBE]: self.exec.serve,
            RESUME_MAGIC[:MODE_PROBE]: self.resumable.serve,
        }
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._command: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True
        )
        address = self._server.sockets[0].getsockname()
        log.info("supervisor listening on %s:%d", address[0], address[1])
        return str(address[0]), int(address[1])

    def run_command(self) -> None:
        """Start the sandbox's own command, if it has one, beside the server (at every start of
        the supervisor: a restarted sandbox runs it again). Its output goes where the
        supervisor's goes; its end is logged and does not end the supervisor."""
        if self.config.command and self._command is None:
            self._command = asyncio.get_running_loop().create_task(self._run_command())

    async def _run_command(self) -> None:
        argv = self.config.command
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=self.config.workdir,
                env=self.config.child_env,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("the sandbox's command %r did not start: %s", argv[0], exc.strerror or exc)
            return
        log.info("the sandbox's command %r started (pid %d)", argv[0], process.pid)
        self.children.running.add(process)
        try:
            code = await process.wait()
        finally:
            self.children.running.discard(process)
        log.info("the sandbox's command %r exited with code %d", argv[0], code)

    async def stop(self) -> None:
        """Stop listening, end every child and connection.

        Attached resumable streams are told first, so their ssh-proxy ends the session at once.
        """
        if self._server is not None:
            self._server.close()
        await self.resumable.tell_stopping()
        await self.children.stop_all()
        if self._command is not None:
            await asyncio.gather(self._command, return_exceptions=True)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.resumable.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        await self.serve_connection(reader, writer, where)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        """Serve one connection to the port-2222 protocol (preface, then a mode), wherever it
        came from: the listening port, or a relay the supervisor opened to the gateway."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
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


async def serve(
    config: SupervisorConfig,
    files: sshd.SshdFiles | None = None,
    *,
    dial_out: Callable[[Supervisor], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Prepare sshd, serve until SIGTERM or SIGINT, then stop everything.

    :param dial_out: the ``supervisor`` transport: instead of listening, run this (it holds the
        session to the gateway and hands each relay to :meth:`Supervisor.serve_connection`).
    """
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
    if dial_out is None:
        await supervisor.start()
        supervisor.run_command()
        await stopping.wait()
    else:
        holding = asyncio.create_task(dial_out(supervisor))
        supervisor.run_command()
        await asyncio.wait(
            [holding, asyncio.create_task(stopping.wait())], return_when="FIRST_COMPLETED"
        )
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await holding
    log.info("stopping")
    await supervisor.stop()
