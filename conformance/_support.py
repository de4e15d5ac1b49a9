"""What the conformance tests share: which scenario traits each property applies to, the workload
put on a gateway before a scenario, and the outcome the tests check after it.

One :class:`Outcome` per scenario (a session-scoped fixture in ``conftest.py``): a gateway is
deployed, the :class:`Workload` creates sandboxes, writes markers, starts a process, holds an SSH
session open and records what the gateway acknowledged; the scenario disrupts and recovers the
gateway; then every property test checks its part of the record. Probes read the gateway only the
way a user can (its API, SSH through it, ``docker inspect`` of the objects named after it), plus the
optional facts a driver offers (its abilities: ``state-digests``, ``sandbox-containers``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from openshell_core.errors import NotFoundError, OpenShellError, ReadinessTimeout
from openshell_core.host.api_client import GatewayClient, SandboxInfo
from openshell_core.host.metadata import MtlsFiles
from openshell_core.retry import poll_until
from openshell_core.wire import contract
from openshell_core.wire.contract import SANDBOX_TOKEN_ENV
from pytest_openshell.drivers import (
    TOKEN_KEY_DIGEST,
    GatewayHandle,
    ListsSandboxContainers,
    ReportsStateDigests,
)
from pytest_openshell.fixtures import HeldSession, SandboxFactory, ScenarioFixture, SshHelper
from pytest_openshell.scenarios import (
    Applies,
    EngineScope,
    GatewayFate,
    HeldSessionFate,
    SandboxFate,
    ScenarioRun,
    StateOutcome,
    Traits,
    on_docker,
)
from pytest_openshell.session import OpenShellSession
from pytest_openshell.survival import GiveUp, SurvivalRecord, SurvivalViolation

from ._history import HistoryOutcome

#: Which scenarios a check applies to, by their traits (never by key: a scenario a downstream
#: project adds is checked like ours). Every state check needs state that survives.
SURVIVING = Applies(state=StateOutcome.SURVIVES)
#: The negative controls: state must NOT survive.
NEGATIVE = Applies(state=StateOutcome.LOST)
#: The gateway's container is the one from before (kept, or stopped and started again).
SAME_CONTAINER = Applies(
    state=StateOutcome.SURVIVES, gateway=frozenset({GatewayFate.KEPT, GatewayFate.RESTARTED})
)
#: The gateway's container is made anew on the same volume (a volume-only resume).
NEW_CONTAINER = Applies(state=StateOutcome.SURVIVES, gateway=frozenset({GatewayFate.RECREATED}))
#: No sandbox's container is made anew: each one the gateway had is adopted.
SANDBOXES_ADOPTED = Applies(
    state=StateOutcome.SURVIVES, sandboxes=frozenset({SandboxFate.KEPT, SandboxFate.RESTARTED})
)
#: The Docker daemon itself was disrupted.
DAEMON = Applies(state=StateOutcome.SURVIVES, engine=EngineScope.DAEMON)
#: A session held open across the scenario carries on, or ends cleanly.
SESSION_CONTINUES = Applies(state=StateOutcome.SURVIVES, held_session=HeldSessionFate.CARRIES_ON)
SESSION_ENDS = Applies(state=StateOutcome.SURVIVES, held_session=HeldSessionFate.ENDS)
#: A resume was made to fail before the recovering start.
FAILED_RESUME = Applies(state=StateOutcome.SURVIVES, failed_resume=True)
#: Seconds a fact that cannot change any more once the gateway answers (its container, its
#: certificates) is given anyway, for the engine to settle.
SETTLED = 5.0
#: Seconds a Ready sandbox may be refused its tunnel (502) before that counts as final: long
#: enough for a re-created network to be joined again, short enough for a fault run to end soon.
REFUSED_FOR_GOOD = 20.0
#: Seconds the negative controls give state that is gone for good to come back (it must not):
#: as long as the positive checks give it, so that their failure proves those checks can fail.
LOST_WINDOW = SETTLED
#: Seconds between two rounds of SSH probes: each probe is a whole SSH session (itself a few
#: tenths of a second), so a short pause is enough not to busy-loop.
REPROBE = 0.2

#: The remote command of the session held open across a scenario: a counter the remote side
#: prints (a line each 0.2 s), and every line the test writes, echoed back.
HELD_COMMAND = (
    '(i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.2; done) & '
    'while IFS= read -r line; do echo "echo $line"; done'
)
#: Image-provided workspace files the workload changes and deletes (the sandbox image's own).
IMAGE_FILE_CHANGED = "/sandbox/README.md"
#: Prints when the sandbox's PID 1 started (clock ticks since boot): changes with a restart.
PID1_START = "cut -d' ' -f22 /proc/1/stat"
IMAGE_FILE_DELETED = "/sandbox/.config/seed"
SENTINEL = "/sandbox/.workspace-initialized"
OUTSIDE_FILE = "/var/tmp/openshell-conformance-outside"
#: The one label on the foreign objects: deliberately not in our namespace.
FOREIGN_LABEL = "org.example.owner"
#: Where the running sandboxes' own command logs each start of their container: one line, the
#: start time of the container's PID 1 (so two starts never write the same line).
STARTS_LOG = "/sandbox/.conformance-starts"
#: A line between the parts of one SSH session's output that the workload reads apart.
SECTION = "--- conformance section ---"
#: The running sandboxes' own command (``spec.command``): it logs the start, then keeps running.
STARTS_COMMAND = (
    "sh",
    "-c",
    f"cut -d' ' -f22 /proc/1/stat >> {STARTS_LOG}; exec sleep 2147483647",
)
#: Makes a sandbox's container fail at every start from now on, for real: the supervisor's own
#: code is moved away inside the container (its layer survives restarts), so each start ends
#: at once with a Python import error, and the engine keeps restarting it.
BREAK_SUPERVISOR = (
    "set -e; d=$(python3 -c 'import openshell_core.sandbox as m, os; "
    'print(os.path.dirname(m.__file__))\'); mv "$d" "$d.broken"; echo broken'
)
#: Ends the sandbox's PID 1 (its supervisor) half a second after the SSH session that runs it.
END_PID1_SOON = "setsid sh -c 'sleep 0.5; kill -TERM 1' </dev/null >/dev/null 2>&1 &"
#: Seconds a sandbox whose container fails at every start may take to be reported in ERROR.
ERROR_WITHIN = 90.0


T = TypeVar("T")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Marker:
    """A file the workload wrote under ``/sandbox``: its path, mode and digest."""

    path: str
    mode: str
    digest: str


@dataclass
class SandboxState:
    """One sandbox of the workload, as acknowledged before the scenario."""

    name: str
    id: str
    running: bool
    host_public_key: str
    container: str | None = None
    container_id: str | None = None
    markers: list[Marker] = field(default_factory=list)
    image_file_digest: str = ""
    pid1_start: str = ""
    process: int = 0
    #: the lines of :data:`STARTS_LOG` before the scenario
    starts: list[str] = field(default_factory=list)
    #: (session, instance, epoch) of its supervisor session before the scenario, as the API
    #: reported it (``supervisor`` transport; None: the gateway reports no session)
    supervisor_session: tuple[str, str, int] | None = None


@dataclass(frozen=True)
class SandboxReading:
    """What one SSH session read in a running sandbox after the scenario
    (:meth:`Outcome.reading`)."""

    #: :data:`SENTINEL` exists
    sentinel: bool
    #: the digest of :data:`IMAGE_FILE_CHANGED` ("" when it is missing)
    image_file_digest: str
    #: :data:`IMAGE_FILE_DELETED` is still deleted
    image_file_deleted: bool
    #: :data:`OUTSIDE_FILE` exists
    outside_file: bool
    pid1_start: str
    #: the process the workload started before the scenario is still there
    process_alive: bool
    #: the lines of :data:`STARTS_LOG`
    starts: list[str]


def _reading_command(state: SandboxState) -> str:
    """A shell script that prints one ``key value`` line for each field of
    :class:`SandboxReading`."""
    return "; ".join(
        [
            f'echo "sentinel $(test -e {SENTINEL} && echo yes || echo no)"',
            f"echo \"image $(sha256sum {IMAGE_FILE_CHANGED} 2>/dev/null | cut -d' ' -f1)\"",
            f'echo "deleted $(test -e {IMAGE_FILE_DELETED} && echo no || echo yes)"',
            f'echo "outside $(test -e {OUTSIDE_FILE} && echo yes || echo no)"',
            f'echo "pid1 $({PID1_START})"',
            f'echo "process $(kill -0 {state.process} 2>/dev/null && echo yes || echo no)"',
            f"echo \"starts $(cat {STARTS_LOG} 2>/dev/null | tr '\\n' ' ')\"",
        ]
    )


def _parse_reading(out: bytes) -> SandboxReading:
    fields = dict((line + " ").split(" ", 1) for line in out.decode().splitlines())
    return SandboxReading(
        sentinel=fields["sentinel"].strip() == "yes",
        image_file_digest=fields["image"].strip(),
        image_file_deleted=fields["deleted"].strip() == "yes",
        outside_file=fields["outside"].strip() == "yes",
        pid1_start=fields["pid1"].strip(),
        process_alive=fields["process"].strip() == "yes",
        starts=fields["starts"].split(),
    )


@dataclass
class Workload:
    """What the conformance suite puts on a gateway before a scenario, and how it reads it back."""

    session: OpenShellSession
    gateway: GatewayHandle
    sandboxes: SandboxFactory
    ssh: SshHelper
    record: SurvivalRecord = field(default_factory=SurvivalRecord)
    states: dict[str, SandboxState] = field(default_factory=dict)
    held: HeldSession | None = None
    held_sandbox: str = ""
    #: the lines written through the held session, in order
    echoed: list[str] = field(default_factory=list)
    #: copies of the host-side mTLS files as they were before the scenario
    old_mtls: MtlsFiles | None = None
    #: ids of the objects made by :meth:`make_foreign`
    foreign: dict[str, str] = field(default_factory=dict)
    #: a sandbox whose container kept failing, in ERROR before the scenario (property 15)
    errored: SandboxState | None = None
    #: a token the gateway gave a running sandbox's supervisor, read in that sandbox before the
    #: scenario ("": the gateway gives none, as in the nssh1 transport), and whose it is
    old_token: str = field(default="", repr=False)
    old_token_sandbox: SandboxState | None = None
    #: when the gateway began to refuse tunnels to each Ready sandbox (cleared by a success)
    _refused_since: dict[str, float] = field(default_factory=dict)
    #: how the gateway says it reaches its sandboxes (``GetGatewayInfo``)
    transport: str = contract.DEFAULT_TRANSPORT

    # -- reading the gateway, the way a user can --

    def client(self) -> GatewayClient:
        return self.session.client(self.gateway)

    def listed(self) -> list[SandboxInfo]:
        with self.client() as client:
            return client.list_sandboxes()

    def info(self, name: str) -> SandboxInfo:
        """The sandbox as the gateway reports it.

        :raises GiveUp: the gateway answers that it has no such sandbox: it lost it for good.
        """
        with self.client() as client:
            try:
                return client.get_sandbox(name)
            except NotFoundError as exc:
                if exc.kind != "sandbox":
                    raise
                raise GiveUp(f"the gateway has no sandbox {name} any more") from exc

    def shell(self, name: str, command: str, *, stdin: bytes | None = None) -> bytes:
        """Run ``command`` over SSH; its stdout.

        :raises GiveUp: the sandbox is in ERROR, or the gateway has refused the tunnel to a
            Ready sandbox (502: unreachable or handshake rejected) for :data:`REFUSED_FOR_GOOD`
            seconds, which no wait mends.
        """
        self.phase(name)  # a sandbox in ERROR: GiveUp, without a minute of ssh-proxy retries
        result = self.ssh.run(self.gateway, name, command, stdin=stdin)
        if result.returncode == 0:
            self._refused_since.pop(name, None)
            return result.stdout
        stderr = result.stderr.decode(errors="replace").strip()
        if "handshake rejected" in stderr:
            # The sandbox itself said no (ERR to the NSSH1 preface): a wait changes nothing.
            raise GiveUp(f"sandbox {name} rejects the gateway's handshake: {stderr[-300:]}")
        with contextlib.suppress(OpenShellError):
            info = self.info(name)
            if info.phase == "ERROR":
                raise GiveUp(f"sandbox {name} is in ERROR: {info.reason}")
            if info.phase == "READY" and "status 502" in stderr:
                since = self._refused_since.setdefault(name, time.monotonic())
                if time.monotonic() - since >= REFUSED_FOR_GOOD:
                    raise GiveUp(
                        f"the gateway has refused every tunnel to the Ready sandbox {name} for "
                        f"{REFUSED_FOR_GOOD:.0f} s: {stderr[-300:]}"
                    )
        raise OSError(f"ssh into {name} exited with {result.returncode}: {stderr[-400:]}")

    def each_running(self, check: Callable[[SandboxState], T]) -> list[tuple[SandboxState, T]]:
        """``check(state)`` for each running sandbox, all at once (each in a thread, over SSH
        sessions of its own): a property then waits for the slowest sandbox, not for the sum of
        them. (state, result) in the order of :meth:`running_states`; the first failure in that
        order is raised as ``check`` raised it."""
        states = self.running_states()
        with concurrent.futures.ThreadPoolExecutor(max(len(states), 1)) as pool:
            results = list(pool.map(check, states))
        return list(zip(states, results, strict=True))

    def shell_each(
        self, command: Callable[[SandboxState], str]
    ) -> list[tuple[SandboxState, bytes]]:
        """:meth:`each_running` for one shell command (its stdout)."""
        return self.each_running(lambda state: self.shell(state.name, command(state)))

    def host_key(self, name: str) -> str:
        return self.info(name).host_public_key

    def phase(self, name: str) -> str:
        """The sandbox's phase.

        :raises GiveUp: it is in ERROR, or the gateway refuses its supervisor as a duplicate
            (``supervisor`` transport; it would refuse every return of it alike).
        """
        info = self.info(name)
        if info.phase == "ERROR":
            raise GiveUp(f"sandbox {name} is in ERROR: {info.reason}")
        refused = refused_supervisor(info)
        if refused is not None:
            raise GiveUp(refused)
        return info.phase

    @property
    def on_docker(self) -> bool:
        """Whether the gateway runs on Docker (the checks marked ``openshell_docker`` read its
        objects; they are skipped, with the reason, elsewhere)."""
        return on_docker(self.session.driver) is None

    def inspect_gateway(self) -> dict[str, Any]:
        found = self.session.engine.inspect_container(self.gateway.container_name)
        if found is None:
            raise NotFoundError("container", self.gateway.container_name)
        return found

    # -- the workload --

    def prepare(self) -> None:
        """Create the sandboxes and put the recorded state on them."""
        key = secrets.token_hex(2)
        running = [f"run-{key}-a", f"run-{key}-b"]
        stopped = f"stop-{key}"
        errored = f"err-{key}"
        with concurrent.futures.ThreadPoolExecutor(2 + 2 * len(running)) as pool:
            # The sandbox to break is made first and broken as soon as it is Ready: the wait for
            # ERROR (its runtime's restarts) is the longest part of the preparation.
            self.sandboxes.create(self.gateway, errored, wait=False)
            in_error = pool.submit(self._break_and_await_error, errored)
            # The others are all asked for first and then awaited: their containers start
            # together.
            for name in [*running, stopped]:
                command = STARTS_COMMAND if name in running else ()
                info = self.sandboxes.create(self.gateway, name, command=command, wait=False)
                self.states[name] = SandboxState(
                    name=name, id=info.id, running=True, host_public_key=""
                )
            with self.client() as client:
                for state in self.states.values():
                    ready = client.wait_ready(state.name, timeout=self.session.settings.api_timeout)
                    state.host_public_key = ready.host_public_key
            containers = self._sandbox_containers()
            for state in self.states.values():
                state.container = containers.get(state.id)
                if state.container:
                    state.container_id = self.container_id(state.container)
            # Then, each over its own SSH session: the running ones get their markers (and their
            # own commands' first starts and, in the first, its supervisor's token are read),
            # the held session begins, and the user stops one sandbox: it must stay stopped, and
            # still start on request.
            markers = [
                pool.submit(self._write_markers, self.states[n], read_token=n == running[0])
                for n in running
            ]
            with self.client() as client:
                client.stop_sandbox(stopped)
            self.states[stopped].running = False
            self.held_sandbox = running[0]
            self.held = self.ssh.hold(self.gateway, running[0], HELD_COMMAND)
            self.held.wait_for(lambda out: b"tick 0\n" in out, timeout=60)
            self.echo("before")
            self.held.wait_for(lambda out: b"echo before-" in out, timeout=60)
            for done in markers:
                done.result()
            # Read before the own command had logged its first start: it may still be starting.
            starts = {
                name: pool.submit(
                    eventually,
                    functools.partial(self.command_starts, name, at_least=1),
                    timeout=60,
                    what=f"the own command of {name} logging its first start",
                )
                for name in running
                if not self.states[name].starts
            }
            for name, future in starts.items():
                self.states[name].starts = future.result()
            self.errored = in_error.result()
        self._record()

    def _break_and_await_error(self, name: str) -> SandboxState:
        """:meth:`break_sandbox`, then the wait until the gateway reports the sandbox in ERROR."""
        state = self.break_sandbox(name)
        self.wait_phase(name, "ERROR", within=ERROR_WITHIN)
        return state

    def command_starts(self, name: str, *, at_least: int = 0) -> list[str]:
        """The lines of :data:`STARTS_LOG` in sandbox ``name``.

        :raises AssertionError: fewer than ``at_least`` (for :func:`eventually`).
        """
        lines = self.shell(name, f"cat {STARTS_LOG} 2>/dev/null || true").decode().split()
        assert len(lines) >= at_least, f"{STARTS_LOG} in {name} has {len(lines)} line(s)"
        return lines

    def make_errored(self, name: str) -> SandboxState:
        """A new sandbox, broken (:meth:`break_sandbox`), once the gateway reports it in ERROR."""
        self.sandboxes.create(self.gateway, name, wait=False)
        return self._break_and_await_error(name)

    def break_sandbox(self, name: str) -> SandboxState:
        """Once sandbox ``name`` is Ready: a marker in its workspace, then its container made to
        fail at every start (:data:`BREAK_SUPERVISOR`; PID 1 ended). The marker recorded."""
        with self.client() as client:
            info = client.wait_ready(name, timeout=self.session.settings.api_timeout)
        state = SandboxState(
            name=name, id=info.id, running=False, host_public_key=info.host_public_key
        )
        payload = secrets.token_bytes(1024)
        # PID 1 ends a moment after the session has: a session still open when the supervisor
        # ends would be kept waiting by ssh-proxy, which tries to resume it.
        out = self.shell(
            name,
            "cat > /sandbox/marker.bin; chmod 640 /sandbox/marker.bin; "
            f"{BREAK_SUPERVISOR}; {END_PID1_SOON}",
            stdin=payload,
        )
        assert out.strip() == b"broken", out
        state.markers = [Marker("/sandbox/marker.bin", "640", sha256(payload))]
        return state

    def wait_phase(self, name: str, phase: str, *, within: float) -> SandboxInfo:
        """The sandbox once the gateway reports it in ``phase``; fails at the deadline, or at
        once when the gateway has no such sandbox."""

        def reached() -> SandboxInfo:
            info = self.info(name)
            refused = refused_supervisor(info)
            if refused is not None:
                raise GiveUp(refused)
            assert info.phase == phase, f"{name} is {info.phase} ({info.reason}), not {phase}"
            return info

        found: SandboxInfo = eventually(reached, timeout=within, what=f"{name} in {phase}")
        return found

    def _sandbox_containers(self) -> dict[str, str]:
        """Sandbox id -> container name, when the driver can say (``sandbox-containers``)."""
        driver = self.session.driver
        if not isinstance(driver, ListsSandboxContainers):
            return {}
        containers = driver.sandbox_containers(self.gateway)
        return {name.removeprefix("openshell-sandbox-"): name for name in containers}

    def _write_markers(self, state: SandboxState, *, read_token: bool = False) -> None:
        """One SSH session writes the markers, changes the image's files, and reports what the
        checks compare with later: the changed file's digest, PID 1's start, a process's id, the
        own command's starts logged so far; with ``read_token``, the token the sandbox's
        supervisor was given (:meth:`_take_old_token`)."""
        payload = secrets.token_bytes(4096)
        deep = "/sandbox/deep/er/marker.txt"
        script = (
            f"set -e; cat > /sandbox/marker.bin; chmod 640 /sandbox/marker.bin; "
            f"mkdir -p /sandbox/deep/er; printf '%s' {state.id} > {deep}; chmod 600 {deep}; "
            f"printf 'changed by the user\\n' >> {IMAGE_FILE_CHANGED}; rm -f {IMAGE_FILE_DELETED}; "
            f"echo outside > {OUTSIDE_FILE}; "
            f"sha256sum {IMAGE_FILE_CHANGED}; {PID1_START}; "
            "setsid nohup sleep 86400 >/dev/null 2>&1 < /dev/null & echo $!; "
            f"echo '{SECTION}'; cat {STARTS_LOG} 2>/dev/null || true"
        )
        if read_token:
            script += f"; echo '{SECTION}'; tr '\\0' '\\n' < /proc/1/environ"
        out = self.shell(state.name, script, stdin=payload).decode()
        head, starts, *environ = out.split(f"{SECTION}\n")
        digest_line, pid1_start, process = head.splitlines()
        state.starts = starts.split()
        if environ:
            self._take_old_token(state, environ[0])
        state.markers = [
            Marker("/sandbox/marker.bin", "640", sha256(payload)),
            Marker(deep, "600", sha256(state.id.encode())),
        ]
        state.image_file_digest = digest_line.split()[0]
        state.pid1_start = pid1_start.strip()
        state.process = int(process.strip())

    def container_id(self, container: str) -> str | None:
        found = self.session.engine.inspect_container(container)
        return None if found is None else str(found["Id"])

    # -- objects that are not ours, which nothing may touch --

    def make_foreign(self) -> None:
        """A container, a volume and a network with names like the gateway's and no label of
        ours, as another tool on the same engine would leave them (on Docker only)."""
        if not self.on_docker:
            return
        engine, base = self.session.engine, f"{self.gateway.container_name}-foreign"
        tag = {FOREIGN_LABEL: self.gateway.name}
        image = str(self.inspect_gateway()["Image"])
        network_id = engine.create_network(base, labels=tag)
        engine.create_volume(base, labels=tag)
        container_id = engine.create_container(
            name=base, image=image, labels=tag, network=base, binds=[f"{base}:/data"]
        )
        self.foreign = {"container": container_id, "volume": base, "network": network_id}

    def foreign_objects(self) -> dict[str, str | None]:
        """The foreign objects as they are now (None: gone)."""
        engine, base = self.session.engine, f"{self.gateway.container_name}-foreign"
        container = engine.inspect_container(base)
        volume = engine.inspect_volume(base)
        network = engine.inspect_network(base)
        return {
            "container": None if container is None else str(container["Id"]),
            "volume": None if volume is None else str(volume["Name"]),
            "network": None if network is None else str(network["Id"]),
        }

    def remove_foreign(self) -> None:
        """The suite made these objects, so it removes them, by the ids it was given."""
        engine = self.session.engine
        if not self.foreign:
            return
        with contextlib.suppress(OpenShellError):
            engine.remove_container(str(self.foreign["container"]))
        with contextlib.suppress(OpenShellError):
            engine.remove_volume(str(self.foreign["volume"]))
        with contextlib.suppress(OpenShellError):
            engine.remove_network(str(self.foreign["network"]))

    def echo(self, phase: str) -> None:
        """Write a line through the held session (it comes back as ``echo {line}``)."""
        assert self.held is not None
        line = f"{phase}-{secrets.token_hex(8)}"
        self.echoed.append(line)
        with contextlib.suppress(OSError):
            self.held.send(line.encode() + b"\n")

    def read(self, state: SandboxState) -> SandboxReading:
        """What the running sandbox ``state`` holds now, read in one SSH session."""
        return _parse_reading(self.shell(state.name, _reading_command(state)))

    def pid1_start(self, name: str) -> str:
        """When the sandbox's PID 1 started (clock ticks since boot): changes with a restart."""
        return self.shell(name, PID1_START).decode().strip()

    def marker_facts(self, state: SandboxState) -> list[tuple[str, str]]:
        """(mode, digest) of each marker, read now in one SSH session."""
        command = "; ".join(
            f"stat -c %a {marker.path}; sha256sum {marker.path}" for marker in state.markers
        )
        words = self.shell(state.name, command).decode().split()
        # Each marker prints its mode, then its digest and path.
        return [(words[3 * i], words[3 * i + 1]) for i in range(len(state.markers))]

    def _record(self) -> None:
        record = self.record
        with self.client() as client:
            self.transport = client.transport()
        for state in self.running_states():
            session = self.info(state.name).supervisor_session
            state.supervisor_session = None if session is None else session.identity
        for state in self.states.values():
            want = "READY" if state.running else "STOPPED"
            record.track(f"phase {state.name}", functools.partial(self.phase, state.name))
            assert record.expected(f"phase {state.name}") == want, (
                f"sandbox {state.name} was not {want} before the scenario"
            )
            record.track(f"host key {state.name}", functools.partial(self.host_key, state.name))
        driver = self.session.driver
        if isinstance(driver, ReportsStateDigests):
            record.track("state digests", lambda: driver.state_digests(self.gateway))
            record.track(
                "token key digest",
                lambda: driver.state_digests(self.gateway).get(TOKEN_KEY_DIGEST),
            )
        record.track("server certificate", lambda: server_fingerprint(self.gateway))
        mtls = MtlsFiles.of(self.gateway.name, self.gateway.env)
        record.track(
            "host mTLS files", lambda: [sha256(p.read_bytes()) for p in (mtls.ca_cert, mtls.cert)]
        )
        backup = self.session.run_dir / "mtls-before" / self.gateway.name
        shutil.rmtree(backup, ignore_errors=True)
        backup.mkdir(parents=True)
        for path in (mtls.ca_cert, mtls.cert, mtls.key):
            shutil.copy2(path, backup / path.name)
        self.old_mtls = MtlsFiles(backup / "ca.crt", backup / "tls.crt", backup / "tls.key")
        if not self.on_docker:
            return  # the gateway's container is read only where there is one
        doc = self.inspect_gateway()
        record.track("node identity", lambda: node_identity(self.inspect_gateway()))
        record.track("gateway container", lambda: self.inspect_gateway()["Id"])
        record.track("gateway image", lambda: self.inspect_gateway()["Image"])
        self.gateway.extra["container_before"] = doc["Id"]

    def _take_old_token(self, state: SandboxState, environ: str) -> None:
        """The token the running sandbox ``state`` was created with, as its supervisor was given
        it (``environ``: PID 1's environment, one variable a line, read over SSH as the
        sandbox's user can); property 17 presents it to the gateway after the scenario."""
        prefix = SANDBOX_TOKEN_ENV + "="
        for line in environ.splitlines():
            if line.startswith(prefix) and line[len(prefix) :].strip():
                self.old_token = line[len(prefix) :].strip()
                self.session.redactor.learn(self.old_token)
                self.old_token_sandbox = state
                return

    def running_states(self) -> list[SandboxState]:
        return [state for state in self.states.values() if state.running]

    def stopped_states(self) -> list[SandboxState]:
        return [state for state in self.states.values() if not state.running]


def node_identity(doc: dict[str, Any]) -> tuple[str, str]:
    """The gateway container's hostname and its ``OPENSHELL_NODE_NAME``."""
    config = doc.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    return str(config.get("Hostname") or ""), env.get("OPENSHELL_NODE_NAME", "")


def server_fingerprint(gateway: GatewayHandle) -> str:
    """SHA-256 of the certificate the gateway presents on its port (no client certificate is
    needed to see it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise OSError("the gateway presented no certificate")
    return sha256(der)


@dataclass
class Outcome:
    """One scenario run against one gateway with the workload on it: what the tests check."""

    key: str
    gateway: GatewayHandle
    workload: Workload
    run: ScenarioRun
    scenario: ScenarioFixture
    #: a second gateway stopped before a daemon scenario (it must stay stopped)
    stopped_sibling: GatewayHandle | None = None
    #: what the client threads of --openshell-workload recorded and the checker found (P18)
    history: HistoryOutcome | None = None
    #: the first exec and SSH session into each running sandbox once it was Ready (P13)
    first_use: list[FirstUse] = field(default_factory=list)
    _reachable: bool = False
    #: why :meth:`reachable` failed (its wait took the whole budget: later checks fail at once)
    _unreachable: str | None = None
    #: the settle check of the running sandboxes' phases, begun as soon as the gateway answered
    _settling: concurrent.futures.Future[float] | None = None
    #: the negative controls' checks begun at recovery (:meth:`begin_lost_checks`), by name
    _lost_checks: dict[str, concurrent.futures.Future[None]] = field(default_factory=dict)
    #: what :meth:`reading` read in each running sandbox, by name
    _readings: dict[str, SandboxReading] | None = None
    _reading_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def session(self) -> OpenShellSession:
        return self.workload.session

    @property
    def traits(self) -> Traits:
        return self.run.traits

    @property
    def within(self) -> float:
        """Seconds a fact may take to come back once the gateway answers again."""
        return self.session.settings.recovery_timeout

    def require_recovered(self) -> None:
        """Fail at once, with the reason, when the gateway never came back."""
        if not self.run.recovered:
            pytest.fail(
                f"gateway {self.gateway.name} did not come back after {self.key}: "
                f"{self.run.gave_up}",
                pytrace=False,
            )

    def reachable(self, *, within: float | None = None) -> None:
        """Wait until every running sandbox is Ready and answers a new SSH session (host key
        checked strictly against the one recorded before). From then on, what is read from
        the sandboxes is final: checks of it need no long wait.

        :raises SurvivalViolation: not within ``within`` (default: the recovery budget), or at once
            for a sandbox in ERROR or one whose handshake the gateway's secret no longer passes.
        """
        if self._reachable:
            return
        if self._unreachable is not None:
            pytest.fail(f"(found by an earlier check) {self._unreachable}", pytrace=False)
        self.require_recovered()

        def reached(state: SandboxState) -> None:
            record = SurvivalRecord(poll=REPROBE)
            probe = functools.partial(self.workload.shell, state.name, "echo reached")
            record.expect(f"a new SSH session into {state.name}", probe, b"reached\n")
            record.verify(within=self.within if within is None else within, settle=0)

        try:
            self.workload.each_running(reached)
        except SurvivalViolation as exc:
            self._unreachable = str(exc)
            raise
        self._reachable = True

    def reading(self, state: SandboxState) -> SandboxReading:
        """What running sandbox ``state`` held once every running sandbox was :meth:`reachable`:
        one SSH session each (all at once), read once per scenario for every check of the files
        and processes they hold; from then on these are final."""
        with self._reading_lock:  # a check may ask from several threads at once
            if self._readings is None:
                self.reachable()
                read = self.workload.each_running(self.workload.read)
                self._readings = {done.name: reading for done, reading in read}
            return self._readings[state.name]

    def running_phase_facts(self) -> list[str]:
        return [f"phase {state.name}" for state in self.workload.running_states()]

    def begin_settling(self, pool: concurrent.futures.Executor) -> None:
        """Start the check that every running sandbox is Ready again and stays so for
        ``--openshell-settle`` seconds, in ``pool``, right after the recovery: its window then
        runs while the scenario's other checks do (and starts as early as it can), instead of
        after them. :meth:`settled` waits for its verdict."""
        survives = self.traits.state is StateOutcome.SURVIVES  # else no sandbox is expected
        if survives and self.run.recovered and self._settling is None:
            names, settle = self.running_phase_facts(), self.session.settings.settle
            self._settling = pool.submit(self.verify, *names, settle=settle)

    def lost_checks(self) -> dict[str, Callable[[], None]]:
        """The checks of property 11's negative controls, by name: each must fail (state that must
        not survive is gone), each after its whole window."""
        checks = {"sandboxes": functools.partial(check_sandboxes_listed, self, within=LOST_WINDOW)}
        if isinstance(self.session.driver, ReportsStateDigests):
            checks["state digests"] = functools.partial(
                check_state_digests, self, within=LOST_WINDOW
            )
        return checks

    def begin_lost_checks(self, pool: concurrent.futures.Executor) -> None:
        """Start the negative controls' checks in ``pool`` right after the recovery, side by side:
        each waits out its window, and these windows then pass together and while the
        scenario's other tests run, not one after the other. :meth:`lost_check` has each
        verdict."""
        if self.traits.state is StateOutcome.LOST and self.run.recovered:
            for name, check in self.lost_checks().items():
                self._lost_checks.setdefault(name, pool.submit(check))

    def lost_check(self, name: str) -> None:
        """The verdict of the negative control's check ``name`` (:meth:`lost_checks`): the one
        begun at recovery, or the same check made now.

        :raises SurvivalViolation: as it must, state being lost.
        """
        begun = self._lost_checks.get(name)
        if begun is None:
            self.lost_checks()[name]()
        else:
            begun.result()

    def settled(self) -> float:
        """Seconds until every running sandbox was Ready, which then stayed Ready for the settle
        window (the check :meth:`begin_settling` started, or the same check made now).

        :raises SurvivalViolation: as :meth:`verify`.
        """
        if self._settling is None:
            return self.verify(*self.running_phase_facts(), settle=self.session.settings.settle)
        return self._settling.result()

    def verify(self, *names: str, settle: float = 0.0, within: float | None = None) -> float:
        """Check recorded facts once the gateway is back; ``within`` defaults to the recovery
        budget (pass :data:`SETTLED` for facts that are final once it answers)."""
        self.require_recovered()
        return self.workload.record.verify(
            *names, within=self.within if within is None else within, settle=settle
        )


def refused_supervisor(info: SandboxInfo) -> str | None:
    """Why the gateway says it refused the sandbox's supervisor as a duplicate (None: it does
    not say so)."""
    session = info.supervisor_session
    if session is None or not session.refused:
        return None
    return f"the gateway refused the supervisor of {info.name} as a duplicate: {session.message}"


@dataclass(frozen=True)
class FirstUse:
    """One running sandbox right after the scenario: when it was first seen Ready, and what the
    one exec and the one SSH session tried then said (None: it worked)."""

    sandbox: str
    #: seconds from the gateway's answering again to the sandbox first seen Ready (None: never)
    ready_after: float | None
    #: why it was never seen Ready (it was in ERROR, or the recovery budget ran out)
    not_ready: str | None = None
    exec_failure: str | None = None
    ssh_failure: str | None = None

    @property
    def failures(self) -> list[str]:
        if self.not_ready is not None:
            return [f"{self.sandbox} was never seen Ready: {self.not_ready}"]
        found = [("exec", self.exec_failure), ("SSH session", self.ssh_failure)]
        return [
            f"the first {what} into {self.sandbox}, {self.ready_after:.1f} s after the gateway "
            f"answered and right after it was first seen Ready, failed: {why}"
            for what, why in found
            if why is not None
        ]


#: What the first exec and SSH session run, and what they must print.
FIRST_USE_COMMAND = "echo usable"
FIRST_USE_OUTPUT = b"usable\n"
#: ssh-proxy's words when it retries a sandbox that is not Ready (its 412 retry): a retry.
SSH_PROXY_RETRY = "not ready yet"


def first_use_after_ready(outcome: Outcome) -> list[FirstUse]:
    """Right after the scenario: each running sandbox's phase looked at until it is first seen
    READY (within the recovery budget), and then, at once, exactly one exec through the API and
    one SSH session through the gateway, with no retry (ssh-proxy's own retry of a sandbox not
    Ready counts as a failure). Run before any other check reaches the sandboxes; each sandbox is
    used the moment it is seen READY, beside the looks at the others and their uses."""
    workload = outcome.workload
    if outcome.traits.state is not StateOutcome.SURVIVES or not outcome.run.recovered:
        return []
    started = time.monotonic()
    deadline = started + outcome.within
    pending = {state.name: state for state in workload.running_states()}
    found: list[FirstUse] = []
    uses: list[concurrent.futures.Future[FirstUse]] = []
    last: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max(len(pending), 1)) as pool:
        while pending:
            for name in list(pending):
                try:
                    info = workload.info(name)
                except (GiveUp, OpenShellError) as exc:
                    last[name] = str(exc)
                    if isinstance(exc, GiveUp):
                        found.append(FirstUse(name, None, not_ready=str(exc)))
                        del pending[name]
                    continue
                last[name] = f"{info.phase} ({info.reason or 'no reason given'})"
                refused = refused_supervisor(info)
                if info.phase == "ERROR" or refused is not None:
                    why = refused or f"it is in ERROR: {info.reason}"
                    found.append(FirstUse(name, None, not_ready=why))
                    del pending[name]
                elif info.phase == "READY":
                    ready_after = time.monotonic() - started
                    uses.append(pool.submit(_use_once, outcome, name, ready_after))
                    del pending[name]
            if pending and time.monotonic() >= deadline:
                late = f"after {outcome.within:.0f} s"
                found.extend(
                    FirstUse(name, None, not_ready=f"still {last.get(name, 'unseen')} {late}")
                    for name in pending
                )
                break
            if pending:
                time.sleep(REPROBE)
    return [use.result() for use in uses] + found


def _use_once(outcome: Outcome, name: str, ready_after: float) -> FirstUse:
    workload = outcome.workload
    exec_failure = ssh_failure = None
    try:
        with workload.client() as client:
            result = client.exec(name, ["sh", "-c", FIRST_USE_COMMAND])
        if result.exit_code != 0 or result.stdout != FIRST_USE_OUTPUT:
            exec_failure = (
                f"exit code {result.exit_code}, stdout {result.stdout[-200:]!r}, "
                f"stderr {result.stderr[-300:]!r}"
            )
    except OpenShellError as exc:
        exec_failure = exc.message
    try:
        ssh = workload.ssh.run(workload.gateway, name, FIRST_USE_COMMAND)
        stderr = ssh.stderr.decode(errors="replace").strip()
        if ssh.returncode != 0 or ssh.stdout != FIRST_USE_OUTPUT:
            ssh_failure = f"ssh exited with {ssh.returncode}: {stderr[-400:]}"
        elif SSH_PROXY_RETRY in stderr:
            ssh_failure = f"ssh-proxy had to retry (the gateway refused it as not Ready): {stderr}"
    except OpenShellError as exc:  # its session token was refused
        ssh_failure = exc.message
    except subprocess.TimeoutExpired as exc:
        ssh_failure = f"ssh did not end within {exc.timeout:.0f} s"
    return FirstUse(name, ready_after, exec_failure=exec_failure, ssh_failure=ssh_failure)


def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Call ``check`` until it returns without raising; its last error at the deadline. A check
    that raises :class:`GiveUp` fails at once."""
    try:
        return poll_until(
            check,
            lambda _: True,
            timeout=timeout,
            what=what,
            retry_on=(OSError, OpenShellError, AssertionError),
            schedule=(0.05, 1.5, 0.5),
        )
    except ReadinessTimeout as exc:
        pytest.fail(str(exc), pytrace=False)


# -- the checks that the negative controls must see fail (properties 2, 3 and 5) ---------------


def check_sandboxes_listed(outcome: Outcome, *, within: float) -> None:
    """Property 2: every acknowledged sandbox is listed with its id and name, none is duplicated,
    and none appears that nobody created (the scenario's own creations aside)."""
    workload = outcome.workload
    created = set(outcome.run.created_sandboxes)
    acknowledged = [*workload.states.values(), *filter(None, [workload.errored])]
    expected = sorted((state.id, state.name) for state in acknowledged)

    def listed() -> list[tuple[str, str]]:
        found = sorted((info.id, info.name) for info in workload.listed())
        return [item for item in found if item[1] not in created]

    record = SurvivalRecord()
    record.expect("listed sandboxes", listed, expected)
    # What the gateway lists once it answers is what its store holds: final.
    record.verify(within=min(within, SETTLED), settle=0)


def check_markers(outcome: Outcome, *, within: float) -> None:
    """Property 3: marker files written under /sandbox have the same bytes and mode."""
    outcome.reachable(within=within)
    workload = outcome.workload

    def markers_kept(state: SandboxState) -> None:
        record = SurvivalRecord(poll=REPROBE)
        record.expect(
            f"markers of {state.name}",
            functools.partial(workload.marker_facts, state),
            [(marker.mode, marker.digest) for marker in state.markers],
        )
        record.verify(within=SETTLED, settle=0)

    workload.each_running(markers_kept)


def check_state_digests(outcome: Outcome, *, within: float = SETTLED) -> None:
    """Property 5: the handshake secret and the PKI on the volume are the same (digests)."""
    outcome.workload.record.verify("state digests", within=within, settle=0)
