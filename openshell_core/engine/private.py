"""A private ``dockerd``: an isolated engine this project starts, stops, restarts and crashes.

Everything it needs lives under one root directory (data-root, exec-root, socket, pidfile, log), its
networks come from an address pool in 198.18.0.0/15 (never 10/8, 172.16/12 or 192.168/16), it has no
default bridge (``--bridge=none``: every container joins a user network) and it leaves the host's
firewall alone apart from one tagged FORWARD rule (see :mod:`._firewall`). Restarting it is the real
"Docker restart" scenario and never disturbs the machine's own Docker.

Several processes may share one private engine (pytest workers): start and stop run under an
exclusive lock file, and a second :meth:`PrivateEngine.start` finds the running daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from openshell_core.engine import _firewall, _proc
from openshell_core.engine.docker_api import Engine, connect, unix_socket_answers
from openshell_core.errors import (
    EngineError,
    EnginePermissionError,
    EnginePrerequisiteError,
    ReadinessTimeout,
    UsageError,
)
from openshell_core.retry import GiveUp, poll_until
from openshell_core.users import owner_of, this_user

log = logging.getLogger("openshell.engine")

#: Where private engines live unless ``OPENSHELL_ENGINE_ROOT`` says otherwise.
DEFAULT_ENGINES_DIR = Path("/var/lib/pytest-openshell/engines")
DEFAULT_ENGINE_NAME = "default"
#: The range every private engine's address pool is carved from (RFC 2544 benchmarking space).
POOL_RANGE = ipaddress.ip_network("198.18.0.0/15")
FORBIDDEN_RANGES = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
#: Size of one engine's pool and of each network inside it: 64 networks of 62 hosts.
POOL_PREFIX = 20
NETWORK_PREFIX = 26
#: unix(7): sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Seconds the containers a dead daemon left get to exit on SIGTERM (dockerd's own
#: ``--shutdown-timeout``) before they are killed.
ORPHAN_GRACE = 10.0
#: The name server a private engine gives its containers: their own loopback, where nothing
#: answers (no lookup of a name unknown to Docker ever leaves the machine).
CONTAINER_DNS = "127.0.0.1"
INSTALL_HINT = "apt-get install -y docker.io iptables (or run ci/setup.sh)"


def engines_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("OPENSHELL_ENGINE_ROOT") or DEFAULT_ENGINES_DIR)


def default_pool(root: Path, name: str) -> str:
    """A /20 inside 198.18.0.0/15 chosen by the engine's root and name, so engines rarely share a
    pool: two engines called ``default`` under different roots get different pools (31 times in
    32). Deterministic, so an engine's pool is the same on every start.

    Sharing would still work: Docker skips subnets that overlap an existing route.
    """
    return _pool_for(f"{Path(root).absolute()}\0{name}")


def _legacy_pool(name: str) -> str:
    """The pool engines got before pools depended on the root (from the name alone)."""
    return _pool_for(name)


def _pool_for(key: str) -> str:
    blocks = 2 ** (POOL_PREFIX - POOL_RANGE.prefixlen)
    index = hashlib.sha256(key.encode()).digest()[0] % blocks
    base = int(POOL_RANGE.network_address) + index * 2 ** (32 - POOL_PREFIX)
    return f"{ipaddress.ip_address(base)}/{POOL_PREFIX}"


def validate_pool(pool: str) -> str:
    try:
        network = ipaddress.ip_network(pool)
    except ValueError as exc:
        raise UsageError(f"address pool {pool!r} is not a network: {exc}") from exc
    for forbidden in FORBIDDEN_RANGES:
        if network.overlaps(forbidden):
            raise UsageError(
                f"address pool {pool} overlaps {forbidden}, which must not be used here",
                hint=f"choose a pool inside {POOL_RANGE}",
            )
    if network.prefixlen > NETWORK_PREFIX:
        raise UsageError(f"address pool {pool} is smaller than one /{NETWORK_PREFIX} network")
    return str(network)


@dataclass(frozen=True)
class EngineStatus:
    name: str
    running: bool
    pid: int | None
    host: str
    root: Path
    address_pool: str


class PrivateEngine:
    """An isolated ``dockerd`` under ``root``; see the module docstring.

    :param name: names the engine (its directory and firewall tag).
    :param root: its directory; default ``$OPENSHELL_ENGINE_ROOT/{name}``.
    :param address_pool: the pool its networks come from; default: the pool recorded in its root
        at its first start, else :func:`default_pool`.
    :param dockerd: the daemon binary (a name on ``PATH`` or a path).
    """

    def __init__(
        self,
        name: str = DEFAULT_ENGINE_NAME,
        root: Path | None = None,
        *,
        address_pool: str | None = None,
        dockerd: str = "dockerd",
    ) -> None:
        self.name = name
        self.root = (root or engines_dir() / name).absolute()
        self.address_pool = validate_pool(address_pool or self._recorded_pool())
        self.dockerd = dockerd

    # -- paths -------------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        return self.root / "exec"

    @property
    def socket_dir(self) -> Path:
        """The socket's own directory: containers mount it, because the socket file itself is
        recreated on every daemon start."""
        return self.root / "run"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "docker.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def pool_record(self) -> Path:
        return self.root / "address-pool"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def _firewall_tag(self) -> str:
        return f"pytest-openshell engine {self.root}"

    def __repr__(self) -> str:
        return f"PrivateEngine(name={self.name!r}, root={str(self.root)!r})"

    # -- public operations -------------------------------------------------------------------

    def check_prerequisites(self) -> None:
        """Raise :class:`EnginePrerequisiteError` naming everything this machine lacks."""
        missing = []
        if os.geteuid() != 0:
            missing.append(
                "not running as root: dockerd needs root (run as root, or point DOCKER_HOST at "
                "an engine you may use)"
            )
        if shutil.which(self.dockerd) is None:
            missing.append(f"dockerd is not installed ({self.dockerd!r} not found): {INSTALL_HINT}")
        for helper in ("containerd", "runc"):
            if shutil.which(helper) is None:
                missing.append(f"{helper} is not installed: {INSTALL_HINT}")
        if _firewall.bridged_traffic_filtered() and _firewall.iptables() is None:
            missing.append(
                "iptables is not installed, and bridged traffic is filtered by the FORWARD chain: "
                "apt-get install -y iptables"
            )
        longest = self.exec_root / "containerd" / "containerd.sock.ttrpc"
        if len(str(longest)) > MAX_SOCKET_PATH:
            missing.append(
                f"the engine root {self.root} is too long for unix sockets "
                f"({len(str(longest))} > {MAX_SOCKET_PATH} bytes): choose a shorter "
                "OPENSHELL_ENGINE_ROOT"
            )
        if missing:
            raise EnginePrerequisiteError(missing)

    def status(self) -> EngineStatus:
        pid = self._running_pid()
        return EngineStatus(
            name=self.name,
            running=pid is not None and unix_socket_answers(self.socket_path),
            pid=pid,
            host=self.host,
            root=self.root,
            address_pool=self.address_pool,
        )

    def is_running(self) -> bool:
        return self.status().running

    def start(self, *, timeout: float = 60.0) -> bool:
        """Start the daemon unless it runs already; True when this call started it."""
        self._running_pid()  # another user's engine: say so, rather than "not running as root"
        self.check_prerequisites()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lifecycle_lock():
            if self._running_pid() is not None and unix_socket_answers(self.socket_path):
                self._ensure_firewall()
                return False
            self._refuse_foreign_holders()
            self._end_orphans()
            self._clear_stale_files()
            self._record_pool()
            self._ensure_firewall()
            log.info("starting private Docker engine %r under %s", self.name, self.root)
            self._spawn()
            self._wait_ready(timeout)
            return True

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the daemon gracefully (it stops its containers first); leaves no process behind."""
        with self._lifecycle_lock():
            pid = self._running_pid()
            if pid is not None:
                log.info("stopping private Docker engine %r (pid %d)", self.name, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if _proc.wait_gone({pid}, timeout=timeout):
                    log.warning("dockerd %d ignored SIGTERM for %.0f s; killing it", pid, timeout)
            # Whatever is left of this engine (containerd, shims) after a graceful stop is killed.
            leftovers = self._engine_processes()
            if leftovers:
                _proc.kill_all(leftovers)
                _proc.wait_gone(leftovers, timeout=10)
            self._clear_stale_files()
            # A daemon bind-mounts its data root onto itself, and unmounts it on shutdown only
            # when it made the mount: after a crash the next daemon finds it made already, and
            # it would outlive the engine. Nothing of the engine runs now, so nothing is in use.
            _unmount_below(self.root)
            _firewall.remove_accept(self.address_pool, self._firewall_tag)

    @contextlib.contextmanager
    def lease(self, *, timeout: float = 60.0) -> Iterator[PrivateEngine]:
        """Use the engine for the duration of the block, starting it when needed.

        Each holder registers itself under ``holders/``; when the block ends, the engine is stopped
        only if this lease started it and no other live process still holds it. This is how
        several test sessions share one engine without stopping it under each other.
        """
        started = self.start(timeout=timeout)
        holder = self._holders_dir / f"{os.getpid()}-{time.monotonic_ns()}"
        holder.write_text(f"{os.getpid()}\n")
        try:
            yield self
        finally:
            holder.unlink(missing_ok=True)
            if started and not self._live_holders():
                self.stop(timeout=timeout)

    @property
    def _holders_dir(self) -> Path:
        path = self.root / "holders"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _live_holders(self) -> list[Path]:
        live = []
        for holder in self._holders_dir.iterdir():
            pid = _proc.read_pidfile(holder)
            if pid is not None and _proc.is_alive(pid):
                live.append(holder)
            else:
                holder.unlink(missing_ok=True)  # left by a process that died
        return live

    def restart(self, *, timeout: float = 60.0) -> None:
        """Graceful stop, then start: what ``systemctl restart docker`` does."""
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def crash(self) -> None:
        """SIGKILL the daemon, containerd, every shim and every container process at once.

        This is a power cut, minus the reboot: the daemon is left stopped with its state on disk,
        and the next :meth:`start` recovers from it.
        """
        with self._lifecycle_lock():
            victims = self._engine_processes()
            log.info(
                "crashing private Docker engine %r: SIGKILL to %d processes",
                self.name,
                len(victims),
            )
            _sigkill(victims)

    def kill_daemon(self) -> None:
        """SIGKILL dockerd and its containerd only; the shims and the containers go on running.

        This is the common daemon crash (an OOM kill, ``systemctl kill docker``): the daemon is
        left stopped, its containers orphaned, and the next :meth:`start` recovers from it.
        """
        with self._lifecycle_lock():
            table = {process.pid: process for process in _proc.all_processes()}
            victims = {
                pid
                for pid in self._engine_processes()
                if pid in table and table[pid].name in ("dockerd", "containerd")
            }
            log.info(
                "killing private Docker engine %r: SIGKILL to dockerd and containerd (%d "
                "processes), its containers left running",
                self.name,
                len(victims),
            )
            _sigkill(victims)

    def purge(self) -> None:
        """Stop the engine and delete its directory, images and volumes included."""
        self.stop()
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self) -> Engine:
        """An :class:`Engine` for this daemon (which must be running)."""
        return connect(self.host, source=f"private engine {self.name}", private=self)

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lifecycle_lock(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = (self.root / "lifecycle.lock").open("a")
        except PermissionError as exc:
            raise self._denied(exc) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _denied(self, exc: PermissionError) -> EnginePermissionError:
        """The error for a user who may not touch this engine's files (it runs as root)."""
        return EnginePermissionError(
            f"permission denied: private engine {self.name!r} under {self.root} belongs to "
            f"{owner_of(self.root)}, and this user ({this_user()}) may "
            f"not use it ({exc.strerror or exc}: {exc.filename or self.root})",
            hint="run as root (or as the user who started the engine), or set DOCKER_HOST to an "
            "engine this user may use",
        )

    def _recorded_pool(self) -> str:
        """The pool this engine was first started with: its networks live in it, and its
        firewall rule names it, so a later change of :func:`default_pool` must not move it."""
        try:
            return self.pool_record.read_text().strip() or default_pool(self.root, self.name)
        except FileNotFoundError:
            pass
        except OSError:  # a root we may not read (not root): refused with the reason later
            return default_pool(self.root, self.name)
        # An engine whose data predates the record got its pool from its name alone.
        with contextlib.suppress(OSError):
            if self.data_root.is_dir():
                return _legacy_pool(self.name)
        return default_pool(self.root, self.name)

    def _record_pool(self) -> None:
        if not self.pool_record.exists():
            self.pool_record.write_text(self.address_pool + "\n")

    def _running_pid(self) -> int | None:
        try:
            pid = _proc.read_pidfile(self.pidfile)
        except PermissionError as exc:
            raise self._denied(exc) from None
        if pid is None or not _proc.is_alive(pid):
            return None
        process = _proc.read(pid)
        if process is None or process.name != "dockerd":
            return None
        return pid

    def _engine_processes(self) -> set[int]:
        """dockerd, its containerd, the shims and everything they run."""
        table = _proc.all_processes()
        exec_root = str(self.exec_root)
        ours: set[int] = set()
        pid = self._running_pid()
        if pid is not None:
            ours.add(pid)
        for process in table:
            if process.state in ("Z", "X"):
                continue
            if any(exec_root in arg for arg in process.argv) and process.name in (
                "dockerd",
                "containerd",
                "containerd-shim-runc-v2",
                "containerd-shim",
                "docker-proxy",
            ):
                ours.add(process.pid)
        shims = {p.pid for p in table if p.pid in ours and p.name.startswith("containerd-shim")}
        ours |= _proc.descendants(shims, table)
        return {pid for pid in ours if _proc.is_alive(pid)}

    def _end_orphans(self, *, grace: float = ORPHAN_GRACE) -> None:
        """End what a daemon that died left running: containerd, shims, containers.

        A dockerd started without live-restore stops the containers it finds still running, the
        way ``docker stop`` does, and so marks them stopped by their user: every ``unless-stopped``
        container would stay down (``Exited (0)``). Ended here instead (SIGTERM, then SIGKILL),
        they count as crashed, and the daemon restarts them as after a power cut.
        """
        leftovers = self._engine_processes()
        if not leftovers:
            return
        table = _proc.all_processes()
        shims = {p.pid for p in table if p.pid in leftovers and p.name.startswith("containerd-sh")}
        inits = {p.pid for p in table if p.ppid in shims and p.pid in leftovers}
        log.info(
            "engine %r: its daemon died and left %d containers running; ending them so that "
            "Docker restarts them by their restart policy",
            self.name,
            len(inits),
        )
        _proc.kill_all(inits, signal.SIGTERM)
        _proc.wait_gone(inits, timeout=grace)
        rest = self._engine_processes()
        _proc.kill_all(rest)
        survivors = _proc.wait_gone(rest, timeout=15)
        if survivors:
            raise EngineError(
                f"processes {sorted(survivors)} left by engine {self.name!r}'s dead daemon "
                "survived SIGKILL",
                hint=f"end them (kill -9 {' '.join(map(str, sorted(survivors)))}), then start "
                "the engine again",
            )

    def _refuse_foreign_holders(self) -> None:
        markers = (str(self.data_root), str(self.exec_root), str(self.socket_path))
        for process in _proc.all_processes():
            if process.name != "dockerd" or process.state in ("Z", "X"):
                continue
            held = [marker for marker in markers if any(marker in arg for arg in process.argv)]
            if held:
                raise EnginePrerequisiteError(
                    [
                        f"another dockerd (pid {process.pid}) holds {held[0]} without our "
                        f"pidfile: stop it (kill {process.pid}) or choose another "
                        "OPENSHELL_ENGINE_ROOT"
                    ]
                )
        if self.socket_path.exists() and unix_socket_answers(self.socket_path):
            raise EnginePrerequisiteError(
                [f"a daemon we did not start answers on {self.socket_path}: stop it first"]
            )

    def _clear_stale_files(self) -> None:
        """Remove pidfiles and sockets whose process is gone (a crash leaves them behind)."""
        for pidfile in (self.pidfile, self.exec_root / "containerd" / "containerd.pid"):
            pid = _proc.read_pidfile(pidfile)
            if pid is not None and not _proc.is_alive(pid):
                pidfile.unlink(missing_ok=True)
        if self._running_pid() is None:
            self.socket_path.unlink(missing_ok=True)

    def _ensure_firewall(self) -> None:
        try:
            _firewall.ensure_accept(self.address_pool, self._firewall_tag)
        except OSError as exc:
            raise EngineError(
                f"cannot let containers of engine {self.name!r} reach each other: {exc}",
                hint="check that iptables works here (`iptables -S FORWARD`)",
            ) from exc

    def _command(self) -> list[str]:
        config = self.root / "daemon.json"
        # Our own (empty) config file: /etc/docker/daemon.json belongs to the host's Docker.
        if not config.exists():
            config.write_text(json.dumps({}) + "\n")
        return [
            shutil.which(self.dockerd) or self.dockerd,
            f"--config-file={config}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--host={self.host}",
            f"--pidfile={self.pidfile}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            f"--default-address-pool=base={self.address_pool},size={NETWORK_PREFIX}",
            # Docker's resolver forwards a name it does not know (a gateway that is down, a
            # sandbox container that is gone) to the host's name servers, which are outside
            # hosts. Pointed at each container's own loopback, the lookup fails as it did (no
            # answer comes either way) and nothing leaves the machine.
            f"--dns={CONTAINER_DNS}",
            "--shutdown-timeout=10",
            "--log-level=info",
        ]

    def _spawn(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        with self.logfile.open("a") as logfile:
            logfile.write(f"\n--- pytest-openshell: starting dockerd at {time.ctime()} ---\n")
        # Detach through a shell so the daemon's parent is the system's reaper, not this process:
        # the engine outlives the process that started it (it is shared by pytest workers).
        launcher = '"$@" >>"$LOGFILE" 2>&1 </dev/null & echo $!'
        result = subprocess.run(
            ["sh", "-c", launcher, "sh", *self._command()],
            env={**os.environ, "LOGFILE": str(self.logfile)},
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        self._spawned_pid = int(result.stdout.strip())

    def _wait_ready(self, timeout: float) -> None:
        started = time.monotonic()

        def answers() -> bool:
            if unix_socket_answers(self.socket_path) and self._running_pid() is not None:
                return True
            if not _proc.is_alive(self._spawned_pid):
                raise GiveUp("exited during start-up")
            return False

        try:
            poll_until(answers, bool, timeout=timeout, what=f"dockerd for engine {self.name!r}")
        except ReadinessTimeout as exc:
            problem = (
                "exited during start-up"
                if isinstance(exc.__cause__, GiveUp)
                else f"did not answer on {self.socket_path} within {timeout:.0f} s"
            )
            raise EngineError(
                f"dockerd for engine {self.name!r} {problem}:\n"
                + "\n".join(f"    {line}" for line in self.log_tail(15)),
                hint=f"full log: {self.logfile}",
            ) from exc
        log.info("private engine %r ready after %.1f s", self.name, time.monotonic() - started)

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]


def _sigkill(victims: set[int]) -> None:
    _proc.kill_all(victims)
    survivors = _proc.wait_gone(victims, timeout=15)
    if survivors:
        raise EngineError(f"processes {sorted(survivors)} survived SIGKILL")


def _unmount_below(root: Path) -> None:
    """Lazily unmount anything still mounted under ``root`` (deepest first) before deleting it."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root) + "/"
    targets = sorted(
        (line.split()[1] for line in mounts if line.split()[1].startswith(prefix)),
        key=len,
        reverse=True,
    )
    for target in targets:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
