"""The sandbox lifecycle: what the API asks for (create, stop, start, delete) and how one sandbox
is brought to what the user asked for (:meth:`SandboxService.reconcile`).

Every change to one sandbox happens under that sandbox's lock, on the event loop; compute driver
calls run in worker threads. The rules (in the words of :mod:`.compute`):

- a sandbox's runtime or workspace is removed only by :meth:`SandboxService.delete`;
- a sandbox the user stopped stays stopped; one that should run and whose runtime stopped or
  vanished is started or made again, on its workspace and with its frozen environment;
- a sandbox whose workspace was made and is now gone goes to ERROR with the reason, and stays
  there (making a fresh, empty workspace would hide the loss);
- a sandbox whose runtime keeps failing (the platform restarts it and it fails again) goes to
  ERROR with the platform's words for the failure, and its failed runtime is removed (never its
  workspace), so that nothing keeps retrying it behind the user's back;
- a sandbox in ERROR is still the user's: stop, start and delete are accepted. A start asks for
  it to run again: a runtime that is gone is made anew on the same workspace (a lost workspace
  sends it back to ERROR with the same reason). The gateway's start gives every sandbox in ERROR
  that should run one such attempt too (upstream #2179: the resume sweep skipped them);
- the sandbox's own command (``spec.command``) is frozen into its runtime's environment, so the
  supervisor runs it at every start of the runtime, not only the first (upstream #1805).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final

from openshell_core import pki
from openshell_core.errors import NotFoundError, OpenShellError, StateError, UsageError
from openshell_core.faults import Fault
from openshell_core.server.compute import ComputeDriver, Observation, RuntimeState, SandboxSpec
from openshell_core.server.config import ServerConfig
from openshell_core.server.model import (
    Desired,
    Phase,
    SandboxRecord,
    SshSessionRecord,
    encode_command,
)
from openshell_core.server.sandbox_link import connect, exec_in_sandbox
from openshell_core.server.sandbox_tokens import TokenSigner
from openshell_core.server.store import Store
from openshell_core.server.supervisor_hub import SupervisorHub
from openshell_core.wire import contract

log = logging.getLogger("openshell.server.sandboxes")

_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Seconds to wait for a freshly started supervisor before leaving it to the next pass.
SUPERVISOR_WAIT: Final = 10.0
#: Seconds between looks at the platform while waiting for a supervisor (is it failing?).
FAILURE_LOOK: Final = 1.0
HANDSHAKE_SKEW_SECS: Final = 300


class SandboxService:
    """The gateway's sandboxes: store records plus what the compute driver runs for them."""

    def __init__(
        self,
        store: Store,
        driver: ComputeDriver,
        config: ServerConfig,
        *,
        secret: str,
        transport: str = contract.DEFAULT_TRANSPORT,
        signer: TokenSigner | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.config = config
        self.secret = secret
        self.transport = transport
        #: ``supervisor`` transport only: the supervisors' sessions and relays.
        self.hub: SupervisorHub | None = None
        if transport == contract.TRANSPORT_SUPERVISOR:
            if signer is None:
                raise ValueError("the supervisor transport needs a token signer")
            stale = config.has(Fault.STALE_SUPERVISOR_OWNER)
            self.hub = SupervisorHub(signer, store, known=self._runs, stale_owners=stale)
            self.hub.listen(self._session_changed)
        self._await_supervisors()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups --

    def find(self, workspace: str, name: str) -> SandboxRecord:
        record = self.store.find_sandbox(workspace, name)
        if record is None or record.desired is Desired.DELETED:
            raise NotFoundError(
                "sandbox", name, hint=f"`sandbox list` shows the sandboxes of {workspace!r}"
            )
        return record

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        return self.store.get_sandbox(sandbox_id)

    def list(self, workspace: str | None) -> list[SandboxRecord]:
        return [r for r in self.store.list_sandboxes(workspace) if r.desired is not Desired.DELETED]

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # -- API verbs --

    async def create(
        self,
        *,
        workspace: str,
        name: str,
        image: str,
        environment: Mapping[str, str],
        labels: Mapping[str, str],
        command: Sequence[str] = (),
    ) -> SandboxRecord:
        """Record a new sandbox and start provisioning it in the background.

        :param command: the sandbox's own command, run in ``/sandbox`` at every start of its
            runtime (empty: the supervisor alone).
        """
        name = name or f"sandbox-{secrets.token_hex(4)}"
        if not _NAME.match(name):
            raise UsageError(
                f"invalid sandbox name {name!r}",
                hint="use 1-63 lowercase letters, digits and '-', starting and ending with a "
                "letter or digit",
            )
        sandbox_id = str(uuid.uuid4())
        private_key, public_key = await asyncio.to_thread(pki.generate_ssh_host_key)
        record = SandboxRecord(
            id=sandbox_id,
            name=name,
            workspace=workspace,
            image=image or self.config.sandbox_image,
            environment=dict(environment),
            labels=dict(labels),
            sandbox_env={
                **self._sandbox_env(
                    sandbox_id, name, private_key, environment, self.secret, command=command
                ),
                **self._transport_env(sandbox_id),
            },
            host_key_public=public_key,
            host_key_fingerprint=pki.ssh_fingerprint(public_key),
        )
        self.store.insert_sandbox(record)
        log.info("sandbox %s (%s) created in workspace %s", name, sandbox_id, workspace)
        self.spawn(self.reconcile(sandbox_id))
        return record

    async def stop(self, record: SandboxRecord) -> SandboxRecord:
        async with self.lock(record.id):
            self._refuse_in_error(self._require(record.id))
            self._update(record.id, desired=Desired.STOPPED, phase=Phase.STOPPING, reason="")
            with contextlib.suppress(NotFoundError):
                await asyncio.to_thread(self.driver.stop, record.id)
            return self._update(record.id, phase=Phase.STOPPED, reason="stopped by the user")

    async def start(self, record: SandboxRecord) -> SandboxRecord:
        async with self.lock(record.id):
            current = self._require(record.id)
            if current.desired is Desired.RUNNING and current.phase is Phase.READY:
                return current
            if current.phase is Phase.ERROR:
                self._refuse_in_error(current)
                # What ended in ERROR is looked at again under the usual rules: a lost workspace
                # fails again at once, a removed runtime is made anew on the workspace. Starting
                # the old runtime here could bring up a workspace the platform made empty.
                updated = self._update(
                    record.id,
                    desired=Desired.RUNNING,
                    phase=Phase.PROVISIONING,
                    reason=f"starting again after an error ({current.reason})",
                )
                self.spawn(self.reconcile(record.id))
                return updated
            updated = self._update(
                record.id, desired=Desired.RUNNING, phase=Phase.PROVISIONING, reason="starting"
            )
            try:
                if self.config.has(Fault.RESEED_WORKSPACE):
                    await asyncio.to_thread(self.driver.create, self._spec(current))
                else:
                    await asyncio.to_thread(self.driver.start, record.id)
            except NotFoundError:
                pass  # the runtime is gone: the reconciliation below makes it again
        self.spawn(self.reconcile(record.id))
        return updated

    def _refuse_in_error(self, current: SandboxRecord) -> None:
        """The ``error-refuses-stop`` fault (upstream #3308, #3440): ERROR is a dead end."""
        if current.phase is Phase.ERROR and self.config.has(Fault.ERROR_REFUSES_STOP):
            raise StateError(
                f"sandbox {current.name!r} is in error: {current.reason}",
                hint="delete it and create a new one",
            )

    async def delete(self, record: SandboxRecord) -> None:
        """Remove the sandbox's runtime and workspace, then forget it."""
        async with self.lock(record.id):
            self._update(record.id, desired=Desired.DELETED, phase=Phase.DELETING, reason="")
            await self._remove(record.id)

    async def _remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self.driver.delete, sandbox_id, workspace=True)
        self.store.delete_sandbox(sandbox_id)
        self._locks.pop(sandbox_id, None)
        log.info("sandbox %s deleted", sandbox_id)

    def open_session(self, record: SandboxRecord) -> SshSessionRecord:
        if record.phase is not Phase.READY:
            raise StateError(f"sandbox {record.name!r} is not ready ({record.phase.value})")
        now = time.time()
        ttl = self.config.session_ttl
        session = SshSessionRecord(
            token=secrets.token_urlsafe(32),
            sandbox_id=record.id,
            created_at=now,
            expires_at=now + ttl if ttl > 0 else 0,
        )
        self.store.insert_session(session)
        return session

    # -- the way to a sandbox's supervisor --

    async def open_link(
        self, sandbox_id: str, *, timeout: float = SUPERVISOR_WAIT
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to the sandbox's supervisor, before its NSSH1 preface: a relay through
        its session (``supervisor``) or a connection to its endpoint (``nssh1``).

        :raises OSError, TimeoutError: (``nssh1``) no connection.
        :raises RelayUnavailable: (``supervisor``) no live session, or no relay in time.
        """
        if self.hub is not None:
            return await self.hub.open_relay(sandbox_id)
        host, port = self.driver.endpoint(sandbox_id)
        return await connect(host, port, timeout)

    def supervisor_live(self, sandbox_id: str) -> bool:
        """``supervisor`` transport: whether the sandbox's supervisor holds a session now."""
        return self.hub is not None and self.hub.live(sandbox_id)

    def exists(self, sandbox_id: str) -> bool:
        """The sandbox has a record and its user has not deleted it."""
        return self._runs(sandbox_id)

    def _runs(self, sandbox_id: str) -> bool:
        record = self.store.get_sandbox(sandbox_id)
        return record is not None and record.desired is not Desired.DELETED

    def _session_changed(self, sandbox_id: str, live: bool) -> None:
        """Ready follows the supervisor's session: the live session is what makes it usable."""
        record = self.store.get_sandbox(sandbox_id)
        if record is None or record.desired is not Desired.RUNNING:
            return
        if live and record.phase is Phase.PROVISIONING:
            log.info("sandbox %s is ready (its supervisor connected)", sandbox_id)
            self._update(sandbox_id, phase=Phase.READY, reason="")
        elif not live and record.phase is Phase.READY:
            log.info("sandbox %s: its supervisor session ended; waiting for it", sandbox_id)
            self._update(sandbox_id, phase=Phase.PROVISIONING, reason="waiting for the supervisor")

    def _await_supervisors(self) -> None:
        """A new gateway process has not yet seen any sandbox usable: none is READY until its
        supervisor is back (``supervisor``: its session; ``nssh1``: it accepts connections, which
        after a daemon restart it may not yet). Ready means usable from the first answer of the
        API on; the start's reconciliation makes each one READY again as soon as it is."""
        for record in self.store.list_sandboxes():
            if record.phase is Phase.READY:
                self._update(
                    record.id, phase=Phase.PROVISIONING, reason="waiting for the supervisor"
                )

    def _transport_env(self, sandbox_id: str) -> dict[str, str]:
        """What the supervisor needs to dial out (``supervisor`` transport): its token, where the
        gateway is, and its mutual TLS material."""
        if self.hub is None:
            return {}
        pki_dir = self.config.pki_dir
        return {
            contract.TRANSPORT_ENV: self.transport,
            contract.SANDBOX_TOKEN_ENV: self.hub.signer.issue(sandbox_id).token,
            contract.GATEWAY_ENDPOINT_ENV: f"{self.config.service_name}:{contract.GATEWAY_PORT}",
            contract.SUPERVISOR_CA_ENV: (pki_dir / contract.CA_CERT_FILE).read_text(),
            contract.SUPERVISOR_CERT_ENV: (pki_dir / contract.CLIENT_CERT_FILE).read_text(),
            contract.SUPERVISOR_KEY_ENV: (pki_dir / contract.CLIENT_KEY_FILE).read_text(),
        }

    # -- reconciliation --

    async def reconcile(
        self, sandbox_id: str, *, observed: Observation | None = None, revive: bool = False
    ) -> None:
        """Bring one sandbox towards what the user asked for (one step; safe to repeat).

        :param observed: what a listing said about it; used only when it shows a healthy running
            sandbox, since anything calling for action is looked at again, under the lock.
        :param revive: give a sandbox in ERROR that should run one attempt (the gateway's start
            does); when the attempt fails it stays in ERROR with its reason. Otherwise ERROR
            waits for the user.
        """
        async with self.lock(sandbox_id):
            record = self.store.get_sandbox(sandbox_id)
            if record is None:
                return
            if record.desired is Desired.DELETED:
                await self._remove(sandbox_id)
                return
            if observed is None or not (observed.running and observed.reachable):
                observed = await asyncio.to_thread(self.driver.observe, sandbox_id)
            if record.desired is Desired.STOPPED:
                await self._keep_stopped(record, observed)
            elif record.phase is not Phase.ERROR:
                await self._keep_running(record, observed)
            elif revive:
                log.info("sandbox %s is in error (%s): trying once more", sandbox_id, record.reason)
                await self._keep_running(record, observed, keep_error=True)

    async def _keep_stopped(self, record: SandboxRecord, observed: Observation) -> None:
        if observed.running:
            await asyncio.to_thread(self.driver.stop, record.id)
        if record.phase is not Phase.STOPPED:
            self._update(record.id, phase=Phase.STOPPED, reason="stopped by the user")

    async def _keep_running(
        self, record: SandboxRecord, observed: Observation, *, keep_error: bool = False
    ) -> None:
        persistent = not self.config.has(Fault.NO_WORKSPACE_VOLUME)
        if persistent and record.workspace_created and not observed.workspace:
            where = self.driver.workspace_name(record.id)
            self._fail(
                record, f"workspace {where} is gone; the sandbox's files cannot be recovered"
            )
            return
        if observed.failure:
            await self._give_up_on_runtime(record, observed.failure)
            return
        first = observed.state is RuntimeState.ABSENT and not record.workspace_created
        try:
            if observed.state is RuntimeState.ABSENT:
                why = "runtime missing" if record.workspace_created else "creating"
                await self._provision(record, why)
            elif not observed.running:
                if self.config.has(Fault.ERROR_IS_TERMINAL):
                    self._fail(record, f"sandbox stopped unexpectedly ({observed.detail})")
                    return
                await self._restart(record, observed)
            elif not observed.reachable:
                log.info("sandbox %s is out of the gateway's reach: adopting it again", record.id)
                await asyncio.to_thread(self.driver.adopt, record.id)
        except OpenShellError as exc:
            log.warning("sandbox %s: %s", record.id, exc.message)
            if keep_error:  # the attempt failed: the sandbox stays as it was, reason and all
                self._update(record.id, phase=Phase.ERROR, reason=record.reason)
            else:
                self._update(record.id, phase=Phase.PROVISIONING, reason=exc.message)
            return
        # A runtime the pass found running was not just brought up: should it stop or go, the
        # wait for its supervisor ends early.
        ready = await self._settle(record.id, found_running=observed.running)
        if ready and first and record.command and self.config.has(Fault.NO_COMMAND_REPLAY):
            await self._run_command_once(record)

    async def _give_up_on_runtime(self, record: SandboxRecord, failure: str) -> None:
        """ERROR for a runtime that keeps failing; the runtime goes, the workspace stays."""
        with contextlib.suppress(NotFoundError):
            await asyncio.to_thread(self.driver.delete, record.id, workspace=False)
        self._fail(
            record,
            f"its runtime keeps failing ({failure}); start the sandbox to run it on a new "
            "runtime with the same workspace",
        )

    async def _run_command_once(self, record: SandboxRecord) -> None:
        """The ``no-command-replay`` fault (upstream #1805): the sandbox's command is run once,
        as a detached command after the sandbox is first Ready (as upstream's CLI did over SSH),
        so a runtime that starts again runs its supervisor alone."""
        host, port = self.driver.endpoint(record.id)
        detached = ["sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 &', "sh", *record.command]
        try:
            async for _event in exec_in_sandbox(
                host,
                port,
                self.secret,
                detached,
                token=str(uuid.uuid4()),
                dial=(lambda: self.open_link(record.id)) if self.hub is not None else None,
            ):
                pass
        except OpenShellError as exc:
            log.warning("sandbox %s: its command did not start: %s", record.id, exc.message)

    async def _provision(self, record: SandboxRecord, why: str) -> None:
        log.info("provisioning sandbox %s (%s)", record.id, why)
        self._update(record.id, phase=Phase.PROVISIONING, reason=why)
        await asyncio.to_thread(self.driver.create, self._spec(record))
        if not self.config.has(Fault.NO_WORKSPACE_VOLUME):
            self._update(record.id, workspace_created=True)

    async def _restart(self, record: SandboxRecord, observed: Observation) -> None:
        log.info("starting sandbox %s again (it was %s)", record.id, observed.detail)
        self._update(
            record.id,
            phase=Phase.PROVISIONING,
            reason=f"runtime was {observed.detail}",
            restart_count=record.restart_count + 1,
        )
        if self.config.has(Fault.RESEED_WORKSPACE):
            await asyncio.to_thread(self.driver.create, self._spec(record))
        else:
            await asyncio.to_thread(self.driver.start, record.id)

    async def reseed(self, record: SandboxRecord) -> None:
        """Run the workspace init step for a running sandbox (a no-op thanks to the sentinel;
        with the ``reseed-workspace`` fault it overwrites the user's changes)."""
        async with self.lock(record.id):
            try:
                await asyncio.to_thread(self.driver.create, self._spec(record))
            except OpenShellError as exc:
                log.warning("sandbox %s: workspace check failed: %s", record.id, exc.message)

    async def _settle(self, sandbox_id: str, *, found_running: bool = False) -> bool:
        """READY once the supervisor accepts connections (``nssh1``) or holds its session
        (``supervisor``) (True); otherwise PROVISIONING, or ERROR as soon as the platform says the
        runtime keeps failing. With ``found_running`` (the pass found the runtime running), a
        runtime that stops or goes meanwhile ends the wait at the next look (PROVISIONING): the
        next pass acts on it, rather than this one waiting it out. A runtime the pass has just
        made or started is waited for as before: it may not show as running yet (a platform
        may make the runtime some time after it was asked to)."""
        host, port = self.driver.endpoint(sandbox_id)
        deadline = time.monotonic() + SUPERVISOR_WAIT
        looked = time.monotonic()
        while True:
            if self.supervisor_live(sandbox_id) if self.hub else await _accepts(host, port):
                current = self._require(sandbox_id)
                if current.phase is not Phase.READY:
                    log.info("sandbox %s is ready", sandbox_id)
                    self._update(sandbox_id, phase=Phase.READY, reason="")
                return True
            if time.monotonic() >= deadline:
                self._update(
                    sandbox_id, phase=Phase.PROVISIONING, reason="waiting for the supervisor"
                )
                return False
            if time.monotonic() - looked >= FAILURE_LOOK:
                looked = time.monotonic()
                observed = await asyncio.to_thread(self.driver.observe, sandbox_id)
                if observed.failure:
                    await self._give_up_on_runtime(self._require(sandbox_id), observed.failure)
                    return False
                if found_running and not observed.running:
                    log.info("sandbox %s: its runtime is %s", sandbox_id, observed.detail)
                    self._update(
                        sandbox_id, phase=Phase.PROVISIONING, reason=f"runtime {observed.detail}"
                    )
                    return False
            await asyncio.sleep(0.2)

    def _fail(self, record: SandboxRecord, reason: str) -> None:
        log.error("sandbox %s failed: %s", record.id, reason)
        self._update(record.id, phase=Phase.ERROR, reason=reason)

    # -- helpers --

    def _spec(self, record: SandboxRecord) -> SandboxSpec:
        environment = dict(record.sandbox_env)
        if self.config.has(Fault.NO_COMMAND_REPLAY):
            environment.pop(contract.SANDBOX_COMMAND_ENV, None)
        return SandboxSpec(
            sandbox_id=record.id,
            name=record.name,
            image=record.image,
            environment=environment,
            persistent_workspace=not self.config.has(Fault.NO_WORKSPACE_VOLUME),
            reseed=self.config.has(Fault.RESEED_WORKSPACE),
            api_workspace=record.workspace,
        )

    @staticmethod
    def _sandbox_env(
        sandbox_id: str,
        name: str,
        host_key: str,
        requested: Mapping[str, str],
        secret: str,
        *,
        command: Sequence[str] = (),
    ) -> dict[str, str]:
        """The environment frozen into the sandbox at creation (as upstream: the handshake
        secret too, which is why a regenerated secret locks old sandboxes out)."""
        frozen = {
            **requested,
            contract.SANDBOX_ID_ENV: sandbox_id,
            contract.SANDBOX_NAME_ENV: name,
            contract.HANDSHAKE_SECRET_ENV: secret,
            contract.HANDSHAKE_SKEW_ENV: str(HANDSHAKE_SKEW_SECS),
            contract.SSH_LISTEN_ENV: f"0.0.0.0:{contract.SUPERVISOR_PORT}",
            contract.SSH_HOST_KEY_ENV: host_key,
            contract.AUTHORIZED_KEYS_ENV: requested.get(contract.AUTHORIZED_KEYS_ENV, ""),
        }
        frozen.pop(contract.SANDBOX_COMMAND_ENV, None)  # only the request's command sets it
        if command:
            frozen[contract.SANDBOX_COMMAND_ENV] = encode_command(command)
        return frozen

    def _require(self, sandbox_id: str) -> SandboxRecord:
        record = self.store.get_sandbox(sandbox_id)
        if record is None:
            raise NotFoundError("sandbox", sandbox_id)
        return record

    def _update(self, sandbox_id: str, **changes: Any) -> SandboxRecord:
        updated = self.store.update_sandbox(sandbox_id, **changes)
        if updated is None:
            raise NotFoundError("sandbox", sandbox_id)
        return updated

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %r", task.exception())

    async def idle(self) -> None:
        """Wait until the background work started so far has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        if self.hub is not None:
            await self.hub.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        _, writer = await connect(host, port, timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
