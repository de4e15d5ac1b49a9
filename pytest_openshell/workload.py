"""Client threads that keep working on a gateway while a scenario disrupts it, and record it all.

A :class:`ClientWorkload` runs a few threads ("processes" of the history), each with sandboxes of
its own: it creates them (with labels and an environment), appends numbered lines to a file under
``/sandbox`` through exec and through SSH, reads the file back, stops, starts and deletes them.
Every call is an :class:`~pytest_openshell.history.Operation` with its invocation and completion
times and what the client was told: ``ok``, ``fail`` (the gateway said no) or ``unknown``
(timeout, connection lost). After the scenario it observes the gateway (:meth:`observe`) and
:func:`pytest_openshell.history.check` holds the record to property P18.

Choices are drawn from ``random.Random(seed)`` per thread, so ``--openshell-seed N`` repeats a
run's choices (not its timing: the gateway's answers decide what follows). A thread that raises
is not a gap in the history: :meth:`stop` re-raises its error with the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from openshell_core.errors import (
    NotFoundError,
    OpenShellError,
    StateError,
    UsageError,
)
from openshell_core.host.api_client import GatewayClient, GatewayRpcError
from openshell_core.retry import poll_until
from openshell_core.wire import contract
from openshell_core.wire.contract import AUTHORIZED_KEYS_ENV
from pytest_openshell.history import (
    Event,
    History,
    Kind,
    Observation,
    ObservedSandbox,
    Operation,
    Outcome,
    PhaseSample,
)

if TYPE_CHECKING:
    from pytest_openshell.drivers import GatewayHandle
    from pytest_openshell.fixtures import SshHelper
    from pytest_openshell.session import OpenShellSession

log = logging.getLogger("openshell.workload")

#: The file each sandbox's appends go to.
APPEND_FILE = f"{contract.WORKSPACE_DIR}/workload.log"
#: Seconds a client call may take before its outcome is ``unknown``.
CALL_TIMEOUT = 15.0
#: Live sandboxes per thread at most (the machine has two cores; containers are dear).
MAX_LIVE = 2


class WorkloadError(OpenShellError):
    """A workload thread died: the history has a gap, so it cannot be checked."""


class _Action(enum.Enum):
    CREATE = "create"
    APPEND_EXEC = "append-exec"
    APPEND_SSH = "append-ssh"
    READ = "read"
    STOP = "stop"
    START = "start"
    DELETE = "delete"


#: How often each action is drawn (when it applies).
_WEIGHTS = {
    _Action.CREATE: 1,
    _Action.APPEND_EXEC: 6,
    _Action.APPEND_SSH: 2,
    _Action.READ: 2,
    _Action.STOP: 1,
    _Action.START: 2,
    _Action.DELETE: 1,
}

#: gRPC codes that say the gateway decided (the operation did not happen).
_DEFINITE = {"INVALID_ARGUMENT", "ALREADY_EXISTS", "FAILED_PRECONDITION", "NOT_FOUND"}


def classify(exc: BaseException) -> Outcome:
    """``fail`` when the gateway said no; ``unknown`` when it did not answer (or crashed)."""
    if isinstance(exc, NotFoundError | UsageError | StateError):
        return Outcome.FAIL
    if isinstance(exc, GatewayRpcError) and exc.code in _DEFINITE:
        return Outcome.FAIL
    return Outcome.UNKNOWN


@dataclass
class _Sandbox:
    name: str
    appended: int = 0
    stopped: bool = False


@dataclass
class ClientWorkload:
    """Threads working on ``gateway``; see the module docstring."""

    session: OpenShellSession
    gateway: GatewayHandle
    ssh: SshHelper
    scenario: str
    seed: int
    threads: int = 2
    #: prefix of every sandbox name this workload makes (its sandboxes only are observed)
    prefix: str = "wl"
    #: the gateway's transport, written in the history ("": not said)
    transport: str = ""
    history: History = field(init=False)
    _started: float = field(init=False, default=0.0)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(init=False, default_factory=list)
    _errors: list[str] = field(init=False, default_factory=list)
    _count: int = field(init=False, default=0)
    #: process -> the operation it has invoked and not completed: (kind, sandbox, invoked)
    _inflight: dict[str, tuple[Kind, str, float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.history = History(scenario=self.scenario, seed=self.seed, transport=self.transport)
        self._started = time.monotonic()

    # -- time and records --

    def now(self) -> float:
        """Seconds since the workload began (the history's clock)."""
        return time.monotonic() - self._started

    def at(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading on the history's clock."""
        return monotonic - self._started

    def event(self, what: str, at: float | None = None, until: float | None = None) -> None:
        with self._lock:
            self.history.events.append(Event(self.now() if at is None else at, what, until))

    def _record(self, **fields: object) -> Operation:
        with self._lock:
            op = Operation(index=len(self.history.operations), **fields)  # type: ignore[arg-type]
            self.history.operations.append(op)
            self._inflight.pop(op.process, None)
        return op

    def _invoke(self, process: str, kind: Kind, sandbox: str) -> float:
        """Note an operation as in flight; its invocation time."""
        invoked = self.now()
        with self._lock:
            self._inflight[process] = (kind, sandbox, invoked)
        return invoked

    def in_flight(self) -> dict[str, tuple[Kind, str, float]]:
        """The operations invoked and not completed now, by process."""
        with self._lock:
            return dict(self._inflight)

    @property
    def operations(self) -> int:
        with self._lock:
            return len(self.history.operations)

    # -- the threads --

    def start(self) -> None:
        for number in range(self.threads):
            process = f"w{number}"
            worker = threading.Thread(
                target=self._guarded,
                args=(process, random.Random(f"{self.seed}-{process}")),
                name=f"openshell-workload-{process}",
                daemon=True,
            )
            self._workers.append(worker)
            worker.start()
        self.event("workload started")

    def _guarded(self, process: str, rng: random.Random) -> None:
        try:
            self._loop(process, rng)
        except BaseException:
            with self._lock:
                self._errors.append(f"workload thread {process}:\n{traceback.format_exc()}")
            self._stop.set()

    def acknowledged(self, kind: Kind) -> int:
        with self._lock:
            return sum(
                1 for op in self.history.operations if op.kind is kind and op.outcome is Outcome.OK
            )

    def progress(self, appends: int, *, timeout: float) -> None:
        """Wait until ``appends`` more appends were acknowledged (fails fast if a thread died)."""
        target = self.acknowledged(Kind.APPEND) + appends
        poll_until(
            lambda: self.acknowledged(Kind.APPEND),
            lambda count: count >= target,
            timeout=timeout,
            what=f"{appends} acknowledged appends of the workload",
            fail_fast=lambda: self._errors[0] if self._errors else None,
            schedule=(0.1, 1.5, 0.5),
        )

    def stop(self) -> None:
        """Stop the threads; a thread that died is a :class:`WorkloadError` with its traceback."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=CALL_TIMEOUT * 4)
        self.event("workload stopped")
        alive = [worker.name for worker in self._workers if worker.is_alive()]
        if self._errors or alive:
            detail = "\n".join(self._errors) or f"threads still running: {alive}"
            raise WorkloadError(
                f"the workload of {self.scenario} broke off; its history has a gap:\n{detail}",
                hint=f"re-run with --openshell-seed {self.seed} to repeat its choices",
            )

    def _client(self) -> GatewayClient:
        return GatewayClient.for_gateway(self.gateway.name, env=self.gateway.env, timeout=10)

    def _loop(self, process: str, rng: random.Random) -> None:
        mine: list[_Sandbox] = []
        backoff = 0.0
        while not self._stop.is_set():
            action, target = self._choose(rng, mine)
            outcome = self._do(process, action, target, mine)
            # Pace the thread while the gateway does not answer or says "not yet" (a sandbox
            # still provisioning), instead of spinning.
            backoff = min(backoff * 2 or 0.2, 2.0) if outcome is not Outcome.OK else 0.0
            self._stop.wait(backoff or 0.05)

    def _choose(self, rng: random.Random, mine: list[_Sandbox]) -> tuple[_Action, _Sandbox | None]:
        if not mine:
            return _Action.CREATE, None
        target = rng.choice(mine)
        allowed = [_Action.READ, _Action.DELETE]
        if len(mine) < MAX_LIVE:
            allowed.append(_Action.CREATE)
        allowed += (
            [_Action.START]
            if target.stopped
            else [_Action.APPEND_EXEC, _Action.APPEND_SSH, _Action.STOP]
        )
        weights = [_WEIGHTS[a] for a in allowed]
        return rng.choices(allowed, weights)[0], target

    def _do(
        self, process: str, action: _Action, target: _Sandbox | None, mine: list[_Sandbox]
    ) -> Outcome:
        if action is _Action.CREATE:
            with self._lock:
                self._count += 1
                name = f"{self.prefix}-{process}-{self._count}"
            return self._create(process, name, mine)
        assert target is not None
        if self._gone(target.name):
            mine.remove(target)  # its create was unknown and did not happen, or it was deleted
            return Outcome.FAIL
        if action in {_Action.APPEND_EXEC, _Action.APPEND_SSH}:
            return self._append(
                process, target, via="exec" if action is _Action.APPEND_EXEC else "ssh"
            )
        if action is _Action.READ:
            return self._read(process, target)
        kind = {_Action.STOP: Kind.STOP, _Action.START: Kind.START, _Action.DELETE: Kind.DELETE}
        outcome = self._call(process, kind[action], target.name, self._verb(action, target.name))
        if outcome is Outcome.OK and action is _Action.DELETE:
            mine.remove(target)
        elif outcome is not Outcome.FAIL and action in {_Action.STOP, _Action.START}:
            target.stopped = action is _Action.STOP
        return outcome

    def _gone(self, name: str) -> bool:
        """Whether the last operation on ``name`` was told the sandbox does not exist."""
        with self._lock:
            for op in reversed(self.history.operations):
                if op.sandbox == name:
                    return op.outcome is Outcome.FAIL and "not found" in op.error
        return False

    def _verb(self, action: _Action, name: str) -> Callable[[GatewayClient], object]:
        if action is _Action.STOP:
            return lambda client: client.stop_sandbox(name)
        if action is _Action.START:
            return lambda client: client.start_sandbox(name)
        return lambda client: client.delete_sandbox(name)

    def _call(
        self, process: str, kind: Kind, name: str, verb: Callable[[GatewayClient], object]
    ) -> Outcome:
        invoked = self._invoke(process, kind, name)
        try:
            with self._client() as client:
                verb(client)
        except (OpenShellError, grpc.RpcError, OSError) as exc:
            outcome, error = classify(exc), str(exc).splitlines()[0][:200]
        else:
            outcome, error = Outcome.OK, ""
        self._record(
            process=process,
            kind=kind,
            sandbox=name,
            invoked=invoked,
            completed=self.now(),
            outcome=outcome,
            error=error,
        )
        return outcome

    def _create(self, process: str, name: str, mine: list[_Sandbox]) -> Outcome:
        labels = {"workload": process, "scenario": self.scenario[:40]}
        environment = {
            AUTHORIZED_KEYS_ENV: self.session.user_public_key(),
            "WORKLOAD_SANDBOX": name,
        }
        image = self.session.settings.images.sandbox
        invoked = self._invoke(process, Kind.CREATE, name)
        sandbox_id, error = "", ""
        try:
            with self._client() as client:
                info = client.create_sandbox(
                    name, environment=environment, labels=labels, image=image
                )
            sandbox_id, outcome = info.id, Outcome.OK
        except (OpenShellError, grpc.RpcError, OSError) as exc:
            outcome, error = classify(exc), str(exc).splitlines()[0][:200]
        self._record(
            process=process,
            kind=Kind.CREATE,
            sandbox=name,
            invoked=invoked,
            completed=self.now(),
            outcome=outcome,
            labels=labels,
            environment=environment,
            image=image,
            sandbox_id=sandbox_id,
            error=error,
        )
        if outcome is not Outcome.FAIL:
            # An unknown create may exist: the thread keeps working on it (a delete tidies it).
            mine.append(_Sandbox(name))
        return outcome

    def _append(self, process: str, target: _Sandbox, *, via: str) -> Outcome:
        target.appended += 1
        line = f"{target.name}-{target.appended}"
        command = f"echo {line} >> {APPEND_FILE}"
        invoked = self._invoke(process, Kind.APPEND, target.name)
        error = ""
        try:
            if via == "exec":
                with self._client() as client:
                    result = client.exec(target.name, ["sh", "-c", command], timeout=CALL_TIMEOUT)
                code, stderr = result.exit_code, result.stderr
            else:
                done = self.ssh.run(self.gateway, target.name, command, timeout=CALL_TIMEOUT * 2)
                # 255: ssh itself failed (the tunnel, the gateway): the line may have been written.
                code, stderr = (done.returncode if done.returncode != 255 else -1), done.stderr
        except (OpenShellError, grpc.RpcError, OSError) as exc:
            outcome, error = classify(exc), str(exc).splitlines()[0][:200]
        except Exception as exc:  # subprocess.TimeoutExpired: no answer in time
            outcome, error = Outcome.UNKNOWN, f"{type(exc).__name__}: {exc}"[:200]
        else:
            if code == 0:
                outcome = Outcome.OK
            else:
                outcome = Outcome.FAIL if code > 0 else Outcome.UNKNOWN
                error = f"exit {code}: {stderr.decode(errors='replace').strip()[-200:]}"
        self._record(
            process=process,
            kind=Kind.APPEND,
            sandbox=target.name,
            invoked=invoked,
            completed=self.now(),
            outcome=outcome,
            path=APPEND_FILE,
            line=line,
            via=via,
            error=error,
        )
        return outcome

    def _read(self, process: str, target: _Sandbox) -> Outcome:
        invoked = self._invoke(process, Kind.READ, target.name)
        lines: tuple[str, ...] = ()
        error = ""
        try:
            with self._client() as client:
                result = client.exec(
                    target.name, ["sh", "-c", f"cat {APPEND_FILE} 2>/dev/null; true"]
                )
            lines = tuple(result.stdout.decode(errors="replace").splitlines())
            outcome = Outcome.OK
        except (OpenShellError, grpc.RpcError, OSError) as exc:
            outcome, error = classify(exc), str(exc).splitlines()[0][:200]
        self._record(
            process=process,
            kind=Kind.READ,
            sandbox=target.name,
            invoked=invoked,
            completed=self.now(),
            outcome=outcome,
            path=APPEND_FILE,
            lines=lines,
            via="exec",
            error=error,
        )
        return outcome

    # -- after the scenario --

    def observe(self, *, within: float, settle: float) -> Observation:
        """What the gateway shows now: its list (once no sandbox of ours is provisioning any
        more), phases sampled over ``settle`` seconds, and every file read back (a stopped
        sandbox is started for that, after its phase was seen)."""
        poll_until(
            self._listed,
            lambda found: all(s.phase != "PROVISIONING" for s in found),
            timeout=within,
            what=f"the workload's sandboxes on {self.gateway.name} to finish provisioning",
            retry_on=(OpenShellError, grpc.RpcError),
            describe=lambda found: ", ".join(f"{s.name} {s.phase}" for s in found),
        )
        settled_from = self.now()
        samples: list[PhaseSample] = []

        def sample() -> float:
            samples.append(PhaseSample(self.now(), {s.name: s.phase for s in self._listed()}))
            return self.now() - settled_from

        poll_until(
            sample,
            lambda elapsed: elapsed >= settle,
            timeout=settle + within,
            what="phase samples over the settle window",
            retry_on=(OpenShellError, grpc.RpcError),
            schedule=(0.5, 1.0, 0.5),
        )
        listed = self._listed()
        files: dict[str, dict[str, tuple[str, ...]]] = {}
        unreadable: dict[str, str] = {}
        with self._client() as client:
            for sandbox in listed:
                try:
                    files[sandbox.name] = {APPEND_FILE: self._read_back(client, sandbox, within)}
                except (OpenShellError, grpc.RpcError) as exc:
                    unreadable[sandbox.name] = str(exc).splitlines()[0][:300]
        observation = Observation(
            at=self.now(),
            sandboxes=tuple(listed),
            files=files,
            unreadable=unreadable,
            settled_from=settled_from,
            samples=tuple(samples),
        )
        self.history.observation = observation
        return observation

    def listed(self) -> list[ObservedSandbox]:
        """The workload's sandboxes as the gateway lists them now."""
        return self._listed()

    def _listed(self) -> list[ObservedSandbox]:
        with self._client() as client:
            return [
                ObservedSandbox(
                    id=info.id,
                    name=info.name,
                    phase=info.phase,
                    image=info.image,
                    labels=dict(info.labels),
                    environment=dict(info.environment),
                )
                for info in client.list_sandboxes()
                if info.name.startswith(f"{self.prefix}-")
            ]

    def _read_back(
        self, client: GatewayClient, sandbox: ObservedSandbox, within: float
    ) -> tuple[str, ...]:
        if sandbox.phase == "STOPPED":
            client.start_sandbox(sandbox.name)
        client.wait_ready(sandbox.name, timeout=within)
        result = poll_until(
            lambda: client.exec(sandbox.name, ["sh", "-c", f"cat {APPEND_FILE} 2>/dev/null; true"]),
            lambda result: result.exit_code == 0,
            timeout=within,
            what=f"{APPEND_FILE} of {sandbox.name}",
            retry_on=(GatewayRpcError, StateError),
        )
        return tuple(result.stdout.decode(errors="replace").splitlines())

    def remove(self) -> None:
        """Delete every sandbox of the workload (after the check: other checks list sandboxes)."""
        with contextlib.suppress(OpenShellError, grpc.RpcError), self._client() as client:
            for sandbox in client.list_sandboxes():
                if sandbox.name.startswith(f"{self.prefix}-"):
                    with contextlib.suppress(OpenShellError, grpc.RpcError):
                        client.delete_sandbox(sandbox.name, allow_missing=True)


@contextlib.contextmanager
def running(workload: ClientWorkload) -> Iterator[ClientWorkload]:
    """Start ``workload``; stop it at the end (its error, if a thread died, propagates)."""
    workload.start()
    try:
        yield workload
    finally:
        workload.stop()
