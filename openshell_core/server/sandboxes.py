"""The sandbox lifecycle: what the API asks for (create, stop, start, delete) and how one sandbox
is brought to what the user asked for (:meth:`SandboxService.reconcile`).

Every change to one sandbox happens under that sandbox's lock, on the event loop; compute driver
calls run in worker threads. The rules (in the words of :mod:`.compute`):

- a sandbox's runtime or workspace is removed only by :meth:`SandboxService.delete`;
- a sandbox the user stopped stays stopped; one that should run and whose runtime stopped or
  vanished is started or made again, on its workspace and with its frozen environment;
- a sandbox whose workspace was made and is now gone goes to ERROR with the reason, and stays
  there (making a fresh, empty workspace would hide the loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, Final

from openshell_core import pki
from openshell_core.errors import NotFoundError, OpenShellError, StateError, UsageError
from openshell_core.faults import Fault
from openshell_core.server.compute import ComputeDriver, Observation, RuntimeState, SandboxSpec
from openshell_core.server.config import ServerConfig
from openshell_core.server.model import Desired, Phase, SandboxRecord, SshSessionRecord
from openshell_core.server.sandbox_tokens import TokenSigner
from openshell_core.server.store import Store
from openshell_core.server.supervisor_hub import SupervisorHub
from openshell_core.wire import contract

log = logging.getLogger("openshell.server.sandboxes")

_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Seconds to wait for a freshly started supervisor before leaving it to the next pass.
SUPERVISOR_WAIT: Final = 10.0
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
            self.hub = SupervisorHub(signer, store, known=self._runs)
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
    ) -> SandboxRecord:
        """Record a new sandbox and start provisioning it in the background."""
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
                **self._sandbox_env(sandbox_id, name, private_key, environment, self.secret),
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
                raise StateError(
                    f"sandbox {record.name!r} is in error: {current.reason}",
                    hint="delete it and create a new one",
                )
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
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)

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
        """A new gateway process holds no session yet: no sandbox is READY until its supervisor
        is back (Ready means usable, from the first answer of the API on)."""
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

    async def reconcile(self, sandbox_id: str, *, observed: Observation | None = None) -> None:
        """Bring one sandbox towards what the user asked for (one step; safe to repeat).

        :param observed: what a listing said about it; used only when it shows a healthy running
            sandbox, since anything calling for action is looked at again, under the lock.
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

    async def _keep_stopped(self, record: SandboxRecord, observed: Observation) -> None:
        if observed.running:
            await asyncio.to_thread(self.driver.stop, record.id)
        if record.phase is not Phase.STOPPED:
            self._update(record.id, phase=Phase.STOPPED, reason="stopped by the user")

    async def _keep_running(self, record: SandboxRecord, observed: Observation) -> None:
        persistent = not self.config.has(Fault.NO_WORKSPACE_VOLUME)
        if persistent and record.workspace_created and not observed.workspace:
            where = self.driver.workspace_name(record.id)
            self._fail(
                record, f"workspace {where} is gone; the sandbox's files cannot be recovered"
            )
            return
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
            self._update(record.id, phase=Phase.PROVISIONING, reason=exc.message)
            log.warning("sandbox %s: %s", record.id, exc.message)
            return
        await self._settle(record.id)

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

    async def _settle(self, sandbox_id: str) -> None:
        """READY once the supervisor accepts connections (``nssh1``) or holds its session
        (``supervisor``); otherwise PROVISIONING."""
        host, port = self.driver.endpoint(sandbox_id)
        deadline = time.monotonic() + SUPERVISOR_WAIT
        while True:
            if self.supervisor_live(sandbox_id) if self.hub else await _accepts(host, port):
                current = self._require(sandbox_id)
                if current.phase is not Phase.READY:
                    log.info("sandbox %s is ready", sandbox_id)
                    self._update(sandbox_id, phase=Phase.READY, reason="")
                return
            if time.monotonic() >= deadline:
                self._update(
                    sandbox_id, phase=Phase.PROVISIONING, reason="waiting for the supervisor"
                )
                return
            await asyncio.sleep(0.2)

    def _fail(self, record: SandboxRecord, reason: str) -> None:
        log.error("sandbox %s failed: %s", record.id, reason)
        self._update(record.id, phase=Phase.ERROR, reason=reason)

    # -- helpers --

    def _spec(self, record: SandboxRecord) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=record.id,
            name=record.name,
            image=record.image,
            environment=record.sandbox_env,
            persistent_workspace=not self.config.has(Fault.NO_WORKSPACE_VOLUME),
            reseed=self.config.has(Fault.RESEED_WORKSPACE),
        )

    @staticmethod
    def _sandbox_env(
        sandbox_id: str, name: str, host_key: str, requested: Mapping[str, str], secret: str
    ) -> dict[str, str]:
        """The environment frozen into the sandbox at creation (as upstream: the handshake
        secret too, which is why a regenerated secret locks old sandboxes out)."""
        return {
            **requested,
            contract.SANDBOX_ID_ENV: sandbox_id,
            contract.SANDBOX_NAME_ENV: name,
            contract.HANDSHAKE_SECRET_ENV: secret,
            contract.HANDSHAKE_SKEW_ENV: str(HANDSHAKE_SKEW_SECS),
            contract.SSH_LISTEN_ENV: f"0.0.0.0:{contract.SUPERVISOR_PORT}",
            contract.SSH_HOST_KEY_ENV: host_key,
            contract.AUTHORIZED_KEYS_ENV: requested.get(contract.AUTHORIZED_KEYS_ENV, ""),
        }

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
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError, socket.gaierror):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
