"""Startup and periodic reconciliation of the gateway's sandboxes with its compute driver.

At start the gateway adopts the sandboxes it owns: labelled with its gateway name *and* carrying a
sandbox id its store knows (never matched by hostname). Sandboxes with our gateway label but an id
the store does not know are left alone (logged): only a delete through the API removes anything.
Then, every few seconds while it runs and as soon as the compute driver reports that a runtime
changed, each sandbox is brought towards what its user asked for
(:meth:`SandboxService.reconcile`).

Two fault switches re-create upstream purges here, on purpose and only when switched on:
``container-id-hostname`` (sandboxes labelled with another node name are treated as left over by a
stale node, and purged with their workspaces) and ``relabel-on-upgrade`` (the v2 server derives
its ownership label differently, sees the existing sandboxes as foreign, and purges them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Final

from openshell_core import labels
from openshell_core.errors import OpenShellError
from openshell_core.faults import Fault
from openshell_core.server.compute import Observation, WatchesRuntimes
from openshell_core.server.model import Desired
from openshell_core.server.sandboxes import SandboxService

log = logging.getLogger("openshell.server.reconciler")

#: How many sandboxes are reconciled at once.
PARALLEL: Final = 4


def gateway_label(gateway_name: str, node_name: str, *, relabel: bool) -> str:
    """The value of ``openshell.ai/gateway`` on this gateway's sandboxes.

    It is the gateway name; the ``relabel-on-upgrade`` fault derives it from the node name
    instead, so that sandboxes labelled by an older image look foreign.
    """
    return node_name if relabel else gateway_name


class Reconciler:
    """Keeps the compute driver's sandboxes in line with the store, at start and then
    periodically."""

    def __init__(self, service: SandboxService, *, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._config = service.config
        self._limit = asyncio.Semaphore(PARALLEL)

    async def startup(self) -> None:
        """Adopt what this gateway owns, then reconcile every sandbox once."""
        if self._config.has(Fault.RELABEL_ON_UPGRADE):
            await self._purge_relabelled()
        owned = await asyncio.to_thread(self._service.driver.list_owned)
        if self._config.has(Fault.CONTAINER_ID_HOSTNAME):
            owned = await self._purge_stale_nodes(owned)
        known = {record.id: record for record in self._service.list(None)}
        by_id: dict[str, Observation] = {}
        for observed in owned:
            if observed.sandbox_id in known:
                by_id[observed.sandbox_id] = observed
            else:
                log.warning(
                    "leaving sandbox %s alone: this gateway's store does not know it",
                    observed.sandbox_id,
                )
        log.info(
            "adopted %d running sandbox(es); %d sandbox(es) in the store",
            len(by_id),
            len(known),
        )
        # The resume sweep tries the sandboxes in ERROR too (upstream #2179): an error that a
        # restart of the platform or of the gateway mended must not need the user.
        await self.reconcile_all(by_id, revive=True)
        if self._config.has(Fault.RESEED_WORKSPACE):
            # The fault: the seed step runs at every gateway start, over the user's changes. A
            # correct gateway never seeds a workspace again (its sentinel says it is done), so it
            # does not even start the init step for sandboxes that keep running.
            for sandbox_id, observed in by_id.items():
                record = known[sandbox_id]
                if record.desired is Desired.RUNNING and observed.running:
                    await self._service.reseed(record)

    async def run(self) -> None:
        """Reconcile every ``interval`` seconds until cancelled, and as soon as the driver says a
        runtime changed (when it can: :class:`WatchesRuntimes`)."""
        changed = asyncio.Event()
        stop = threading.Event()
        driver = self._service.driver
        if isinstance(driver, WatchesRuntimes):
            loop = asyncio.get_running_loop()

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # the loop has ended
                    loop.call_soon_threadsafe(changed.set)

            # A thread of its own, not the executor's: the watch blocks for as long as we run,
            # and as a daemon thread it cannot hold the process's exit.
            threading.Thread(
                target=driver.watch, args=(wake, stop), name="runtime-watch", daemon=True
            ).start()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._interval)
                changed.clear()
                await self._pass()
        finally:
            stop.set()

    async def _pass(self) -> None:
        """One reconciliation of every sandbox; a failure is logged, never raised."""
        try:
            await self.reconcile_all()
        except OpenShellError as exc:
            log.warning("reconciliation pass failed: %s", exc.message)
        except Exception:  # the loop must outlive any one failure
            log.exception("reconciliation pass failed")

    async def reconcile_all(
        self, observed: dict[str, Observation] | None = None, *, revive: bool = False
    ) -> None:
        if observed is None:
            found = await asyncio.to_thread(self._service.driver.list_owned)
            observed = {item.sandbox_id: item for item in found}
        records = self._service.store.list_sandboxes()
        await asyncio.gather(
            *(self._one(record.id, observed, revive) for record in records),
            return_exceptions=False,
        )

    async def _one(
        self, sandbox_id: str, observed: dict[str, Observation], revive: bool = False
    ) -> None:
        if self._service.lock(sandbox_id).locked():
            return  # an API call or an earlier pass is working on it
        async with self._limit:
            try:
                # A sandbox absent from the listing is observed again inside reconcile():
                # the listing may predate a concurrent change.
                await self._service.reconcile(
                    sandbox_id, observed=observed.get(sandbox_id), revive=revive
                )
            except OpenShellError as exc:
                log.warning("sandbox %s: %s", sandbox_id, exc.message)
            except Exception:
                log.exception("sandbox %s: reconciliation failed", sandbox_id)

    # -- faults --

    async def _purge_stale_nodes(self, owned: list[Observation]) -> list[Observation]:
        """The node identity fault: sandboxes of "other nodes" are purged."""
        kept = []
        for observed in owned:
            node = observed.labels.get(labels.NODE_NAME, "")
            if node == self._config.node_name:
                kept.append(observed)
                continue
            log.warning(
                "purging sandbox %s of stale node %r (this node is %r)",
                observed.sandbox_id,
                node,
                self._config.node_name,
            )
            await asyncio.to_thread(
                self._service.driver.delete, observed.sandbox_id, workspace=True
            )
        return kept

    async def _purge_relabelled(self) -> None:
        """The ``relabel-on-upgrade`` fault: sandboxes under the old label look foreign and are
        purged, records included."""
        if self._config.gateway_name == self._config.node_name:
            return
        old = await asyncio.to_thread(self._service.driver.list_owned, self._config.gateway_name)
        for observed in old:
            log.warning("purging foreign sandbox %s", observed.sandbox_id)
            await asyncio.to_thread(
                self._service.driver.delete, observed.sandbox_id, workspace=True
            )
            with contextlib.suppress(OpenShellError):
                self._service.store.delete_sandbox(observed.sandbox_id)
