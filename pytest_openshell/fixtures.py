"""The objects behind the plugin's fixtures: gateway and sandbox factories, the SSH helper, and the
per-test scenario handle. Each works without pytest too (a script can drive them directly)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from openshell_core.errors import ReadinessTimeout
from openshell_core.host.api_client import SandboxInfo
from openshell_core.host.sshproxy.ssh_command import ssh_command
from openshell_core.retry import GiveUp, poll_until
from openshell_core.wire.contract import AUTHORIZED_KEYS_ENV
from pytest_openshell.artefacts import Artefacts
from pytest_openshell.drivers import GatewayHandle, ReportsDownReason
from pytest_openshell.options import GatewayOptions
from pytest_openshell.pipes import PipeReader
from pytest_openshell.scenarios import Scenario, ScenarioRun, disrupt, recover

if TYPE_CHECKING:
    from pytest_openshell.session import OpenShellSession

log = logging.getLogger("openshell.plugin")


@dataclass
class GatewayFactory:
    """Deploys gateways with unique names and ports; destroys them at the end of the session."""

    session: OpenShellSession
    made: list[GatewayHandle] = field(default_factory=list)
    #: the shared gateway of each transport (:meth:`shared`)
    _shared: dict[str, GatewayHandle] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def deploy(
        self,
        label: str = "gw",
        options: GatewayOptions | None = None,
        *,
        transport: str | None = None,
    ) -> GatewayHandle:
        """Deploy a gateway named after ``label``, with ``options`` (default: the run's), on
        ``transport`` (default: the one of ``options``, else the run's first)."""
        spec = self.session.gateway_spec(label, options, transport)
        with self.session.access.shared():
            handle = self.session.driver.deploy(spec)
        self.made.append(handle)
        self.session.redactor.learn_files(handle.config_home)  # its mTLS client key
        return handle

    def shared(self, transport: str | None = None) -> GatewayHandle:
        """The gateway of ``transport`` (default: the run's first) that the tests of this worker
        share, deployed on first use."""
        transport = transport or self.session.transports[0]
        with self._lock:
            if transport not in self._shared:
                label = "shared" if len(self.session.transports) == 1 else f"sh{transport[:4]}"
                self._shared[transport] = self.deploy(label=label, transport=transport)
            return self._shared[transport]

    def forget(self, handle: GatewayHandle) -> None:
        """Stop tracking a gateway (a test destroyed it itself)."""
        if handle in self.made:
            self.made.remove(handle)

    def destroy(self, handle: GatewayHandle, *, failed: bool = False) -> None:
        """Destroy one gateway now; kept instead under ``--openshell-keep=always``, and under
        ``--openshell-keep`` (``failed``) when the test that used it ``failed``."""
        self.forget(handle)
        for transport, shared in list(self._shared.items()):
            if shared is handle:
                del self._shared[transport]
        keep = self.session.settings.keep
        if keep == "always" or (keep == "failed" and failed):
            self.session.note_kept(handle)
            return
        with self.session.access.shared():
            self.session.driver.destroy(handle)

    def destroy_all(self) -> None:
        if self.session.keeps():
            for handle in self.made:
                self.session.note_kept(handle)
            return
        with self.session.access.shared():
            for handle in self.made:
                try:
                    self.session.driver.destroy(handle)
                except Exception as exc:
                    log.warning("openshell: could not destroy gateway %s: %s", handle.name, exc)
        self.made.clear()
        self._shared.clear()


@dataclass
class ScenarioFixture:
    """One scenario, ready to be run against gateways.

    ``run(gateway)`` disrupts, recovers and times it; ``disrupt(gateway)`` and ``recover()`` do the
    two halves, for a test that looks at the gateway while it is down (or holds a session across
    it). Each run is kept in :attr:`runs`; the last one is reported with the test.
    """

    session: OpenShellSession
    scenario: Scenario
    #: where the runs' failure artefacts go: the test's own (``item.stash[ARTEFACTS_KEY]``), or
    #: by default the run's store for this scenario, shared by its tests until it is done
    artefacts: list[Artefacts] | None = None
    runs: list[ScenarioRun] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.scenario.key

    def id_on(self, gateway: GatewayHandle) -> str:
        """The run's name for this scenario on ``gateway``'s transport (its artefacts' key)."""
        return self.session.scenario_id(self.key, gateway.spec.options.transport)

    @property
    def last(self) -> ScenarioRun | None:
        return self.runs[-1] if self.runs else None

    def disrupt(
        self, gateway: GatewayHandle, *, at_moment: Callable[[], None] = lambda: None
    ) -> ScenarioRun:
        """Disrupt ``gateway`` (plain engine and driver operations); returns the run.
        ``at_moment`` waits for the moment to strike at (see :mod:`pytest_openshell.strike`)."""
        artefacts = Artefacts(self.session.engine, gateway.name, self.session.redactor)
        sink = (
            self.artefacts
            if self.artefacts is not None
            else self.session.artefacts.of(self.id_on(gateway))
        )
        sink.append(artefacts)
        run = ScenarioRun(
            self.scenario, gateway, self.session.driver, self.session.engine, artefacts
        )
        self.runs.append(run)
        self.session.records.record_run(run)
        hook = self.session.config.hook
        disrupt(
            run,
            on_disrupted=lambda current: hook.pytest_openshell_disrupted(run=current),
            at_moment=at_moment,
        )
        return run

    def recover(
        self, run: ScenarioRun | None = None, *, deadline: float | None = None
    ) -> ScenarioRun:
        """Recover the way a user would, and wait for the gateway's API.

        :param deadline: seconds the recovery may take (default: ``--openshell-recovery-timeout``).
        """
        run = run or self.last
        if run is None:
            raise RuntimeError(f"scenario {self.key}: recover() before disrupt()")
        driver, gateway = self.session.driver, run.gateway
        recover(
            run,
            api_ready=lambda: self.session.driver_ready(gateway),
            deadline=deadline or self.session.settings.recovery_timeout,
            down_reason=(
                (lambda: driver.down_reason(gateway))
                if isinstance(driver, ReportsDownReason)
                else lambda: None
            ),
        )
        self.session.config.hook.pytest_openshell_recovered(run=run)
        return run

    def run(self, gateway: GatewayHandle, *, deadline: float | None = None) -> ScenarioRun:
        """Disrupt ``gateway``, then recover it; returns the run (``recovered``, timings)."""
        return self.recover(self.disrupt(gateway), deadline=deadline)


@dataclass
class SandboxFactory:
    """Creates sandboxes through a gateway's API; deletes the ones it made after the test."""

    session: OpenShellSession
    made: list[tuple[GatewayHandle, str]] = field(default_factory=list)

    def create(
        self,
        gateway: GatewayHandle,
        name: str | None = None,
        *,
        environment: Mapping[str, str] | None = None,
        command: Sequence[str] = (),
        wait: bool = True,
    ) -> SandboxInfo:
        """Create a sandbox the run's SSH key may log into; wait until it is Ready.

        :param command: the sandbox's own command (run at every start of the sandbox).
        """
        wanted = {AUTHORIZED_KEYS_ENV: self.session.user_public_key(), **(environment or {})}
        with self.session.client(gateway) as client:
            info = client.create_sandbox(name, environment=wanted, command=command)
            self.made.append((gateway, info.name))
            if wait:
                info = client.wait_ready(info.name, timeout=self.session.settings.api_timeout)
        return info

    def keep(self, gateway: GatewayHandle, name: str) -> None:
        """Leave sandbox ``name`` alone at the end (the test removed or handed it on)."""
        if (gateway, name) in self.made:
            self.made.remove((gateway, name))

    def delete_all(self) -> None:
        for gateway, name in reversed(self.made):
            with contextlib.suppress(Exception):
                self.session.client(gateway).delete_sandbox(name)
        self.made.clear()


@dataclass
class SshHelper:
    """Real OpenSSH through the gateway's tunnel: one-off commands, and sessions held open."""

    session: OpenShellSession
    held: list[HeldSession] = field(default_factory=list)

    def argv(self, gateway: GatewayHandle, sandbox: str, remote: Sequence[str] = ()) -> list[str]:
        """The ``ssh`` command line into ``sandbox`` (a fresh session token each time)."""
        with self.session.client(gateway) as client:
            info = client.get_sandbox(sandbox)
            session = client.create_ssh_session(sandbox)
        known_hosts = gateway.config_home / "known_hosts.d" / info.id
        return ssh_command(
            gateway.name,
            session.sandbox_id,
            session.token,
            info.host_public_key,
            self.session.user_key(),
            remote,
            known_hosts_file=known_hosts,
        )

    def run(
        self,
        gateway: GatewayHandle,
        sandbox: str,
        command: str,
        *,
        stdin: bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a shell ``command`` in ``sandbox`` over SSH; returns the finished process."""
        return subprocess.run(
            self.argv(gateway, sandbox, [command]),
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env={**os.environ, **gateway.env},
            timeout=timeout,
            check=False,
        )

    def hold(self, gateway: GatewayHandle, sandbox: str, command: str) -> HeldSession:
        """Start ``command`` in ``sandbox`` over SSH and keep the session open (closed at the end
        of the test). Its stdin and stdout stay connected: :meth:`HeldSession.send`,
        :meth:`HeldSession.output`."""
        process = subprocess.Popen(
            self.argv(gateway, sandbox, [command]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **gateway.env},
        )
        held = HeldSession(process)
        self.held.append(held)
        return held

    def close(self) -> None:
        for held in self.held:
            held.close()
        self.held.clear()


class SessionEnded(AssertionError):
    """The held SSH session ended before its output showed what was awaited (the message has its
    exit code and stderr). A caller for whom an end is an outcome, not a failure, catches this."""


class HeldSession:
    """An SSH session kept open: its output is collected as it comes, with arrival times."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lock = threading.Lock()
        self._stdout = bytearray()
        self._stderr = bytearray()
        #: (time.monotonic(), bytes so far) at each arrival: when output stalled, and for how long
        self.arrivals: list[tuple[float, int]] = []
        assert process.stdout is not None and process.stderr is not None, "hold() pipes both"
        self._readers = [
            PipeReader(process.stdout, self._on_stdout, name=f"held-ssh-{process.pid}-stdout"),
            PipeReader(process.stderr, self._on_stderr, name=f"held-ssh-{process.pid}-stderr"),
        ]

    def _on_stdout(self, chunk: bytes) -> None:
        with self._lock:
            self._stdout.extend(chunk)
            self.arrivals.append((time.monotonic(), len(self._stdout)))

    def _on_stderr(self, chunk: bytes) -> None:
        with self._lock:
            self._stderr.extend(chunk)

    def _drain(self, timeout: float = 2.0) -> None:
        """Let the readers take the last output of a session that ended (end of file)."""
        for reader in self._readers:
            reader.join(timeout)

    def _reader_errors(self) -> str:
        errors = [f"{type(r.error).__name__}: {r.error}" for r in self._readers if r.error]
        return f"; reading its output failed: {'; '.join(errors)}" if errors else ""

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._stdout)

    @property
    def errors(self) -> str:
        with self._lock:
            return self._stderr.decode(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, data: bytes) -> None:
        """Write to the remote command's stdin (``BrokenPipeError`` once the session ended)."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def wait_for(self, predicate: Callable[[bytes], bool], *, timeout: float) -> bytes:
        """Wait until ``predicate(output)`` holds; fails fast when the session has ended.

        :raises SessionEnded: at once when the session ended first, with its stderr.
        :raises AssertionError: at the deadline, with the last output.
        """

        def observe() -> bytes:
            ended = not self.alive
            if ended:
                self._drain()
            output = self.output
            if ended and not predicate(output):
                raise GiveUp(
                    f"the SSH session ended (exit code {self.process.returncode}) before its "
                    f"output showed what was awaited; stderr: {self.errors.strip()[-500:]!r}"
                )
            return output

        try:
            return poll_until(
                observe,
                predicate,
                timeout=timeout,
                what="the held SSH session's output",
                describe=lambda output: f"{output[-200:]!r}",
                schedule=(0.02, 1.5, 0.05),
            )
        except ReadinessTimeout as exc:
            failure = SessionEnded if isinstance(exc.__cause__, GiveUp) else AssertionError
            raise failure(f"{exc}{self._reader_errors()}") from exc

    def wait_end(self, *, timeout: float) -> int | None:
        """Wait for the session to end; its exit code, or None if it is still open."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._drain()
        return code

    def longest_stall(self, after: float = 0.0) -> float:
        """The longest gap between two arrivals of output after ``after`` (monotonic seconds)."""
        with self._lock:
            times = [at for at, _ in self.arrivals if at >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def close(self) -> None:
        """End the session and its readers. Each reader closes its own pipe: closing one here
        would race a read in progress (a grandchild such as the ProxyCommand may still write)."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for reader in self._readers:
            reader.stop()
