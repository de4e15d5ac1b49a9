"""The reference gateway's entrypoint: ``python3 -m openshell_core.server`` in the gateway image.

Start order matters: the store is opened (and migrated) first, so that a store the gateway must
not use stops it before anything else changes; then the handshake secret and the PKI are
reconciled; then the compute driver named by the configuration reaches its platform, the API and
the TLS port come up, the ready marker is written (the image's health check looks for it), and the
sandboxes are reconciled.
SIGTERM stops it within a couple of seconds; sandboxes keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import grpc

from openshell_core.errors import OpenShellError, StateError, UsageError
from openshell_core.faults import Fault
from openshell_core.grpc_api import add_servicer_to_server
from openshell_core.server import tunnel
from openshell_core.server.api import GatewayServicer
from openshell_core.server.compute import Ownership
from openshell_core.server.config import ServerConfig, choose_transport
from openshell_core.server.durability_faults import UncommittedStore
from openshell_core.server.listener import GatewayListener, server_tls_context
from openshell_core.server.reconciler import Reconciler, gateway_label
from openshell_core.server.sandbox_tokens import TokenSigner
from openshell_core.server.sandboxes import SandboxService
from openshell_core.server.secrets import (
    reconcile_gateway_pki,
    reconcile_handshake_secret,
    reconcile_token_key,
)
from openshell_core.server.sessions import SessionResolver
from openshell_core.server.store import open_store
from openshell_core.state_record import StateRecord, read_record, write_record
from openshell_core.wire import contract

log = logging.getLogger("openshell.server")

EXIT_USAGE = 2
EXIT_STATE = 3
EXIT_FAILED = 1


def _version(variant: str) -> str:
    try:
        version = importlib.metadata.version("pytest-openshell")
    except importlib.metadata.PackageNotFoundError:
        version = "0+local"
    return f"{version}+gateway.{variant}"


class Gateway:
    """The running gateway: store, secrets, compute driver, API, TLS port and reconciler."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        config = self.config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        config.ready_marker.unlink(missing_ok=True)
        if config.has(Fault.FORGET_SANDBOXES_ON_START):
            log.warning("fault forget-sandboxes-on-start: the store is not kept across starts")
            config.store_path.unlink(missing_ok=True)
        # The store first: a store this gateway must not use stops it before anything changes.
        fresh = not config.store_path.exists()
        store = open_store(config.store_path, schema=config.schema)
        if config.has(Fault.ACK_BEFORE_COMMIT):
            log.warning("fault ack-before-commit: store writes are committed at a clean stop only")
            store = UncommittedStore.over(store)
        self._closers.append(_async(store.close))
        log.info("store %s open at schema version %d", config.store_path, store.version)
        # Only an image that opened the store is recorded: the host resumes on it when this
        # gateway's runtime is gone, and refuses an image too old for the store (state_record).
        # The transport is the recorded one: a deploy asking for another one is refused.
        before = read_record(config.state_dir)
        transport = choose_transport(
            config.transport, before.transport if before else None, fresh=fresh
        )
        write_record(config.state_dir, StateRecord(config.image, store.version, transport))
        secret, _ = reconcile_handshake_secret(
            config.secret_path, regenerate=config.has(Fault.REGENERATE_HANDSHAKE_SECRET)
        )
        token_key, _ = reconcile_token_key(
            config.token_key_path, regenerate=config.has(Fault.REGENERATE_TOKEN_KEY)
        )
        signer = TokenSigner(token_key, ttl=config.sandbox_token_ttl)
        if config.has(Fault.TOKEN_EXPIRY_STRANDS):
            log.warning("fault token-expiry-strands: an expired sandbox token is not exchanged")
        reconcile_gateway_pki(
            config.pki_dir, config.server_sans, rotate=config.has(Fault.ROTATE_PKI_ON_RESUME)
        )
        driver = await asyncio.to_thread(config.compute.open, self._ownership())
        self._closers.append(_async(driver.close))
        log.info("compute driver %s", driver.name)
        service = SandboxService(
            store, driver, config, secret=secret, transport=transport, signer=signer
        )
        log.info("transport %s", transport)
        try:
            await self._serve_api(service)
        finally:
            # Closed first at a stop: the supervisors' sessions end while the API still runs and
            # the store is open, so what their end records is kept; the listener then has no
            # session left to wait for.
            self._closers.append(service.close)
        self._start_reconciling(service)
        config.ready_marker.write_text(f"{os.getpid()}\n")
        log.info(
            "gateway %s ready (node %s from %s, variant %s)",
            config.gateway_name,
            config.node_name,
            config.node_name_source,
            config.variant,
        )

    def _ownership(self) -> Ownership:
        config = self.config
        label = gateway_label(
            config.gateway_name, config.node_name, relabel=config.has(Fault.RELABEL_ON_UPGRADE)
        )
        return Ownership(gateway_label=label, node_name=config.node_name, run_id=config.run_id)

    async def _serve_api(self, service: SandboxService) -> None:
        config = self.config
        grpc_server = grpc.aio.server()
        servicer = GatewayServicer(
            service, version=_version(config.variant), gateway_port=config.gateway_port
        )
        add_servicer_to_server(servicer, grpc_server)
        config.grpc_socket.unlink(missing_ok=True)
        grpc_server.add_insecure_port(f"unix:{config.grpc_socket}")
        await grpc_server.start()
        self._closers.append(lambda: grpc_server.stop(grace=1))

        resolver = SessionResolver(service)

        async def tunnel_handler(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
        ) -> None:
            await tunnel.serve_connect(reader, writer, head, resolver)

        context = server_tls_context(
            cert=config.pki_dir / contract.SERVER_CERT_FILE,
            key=config.pki_dir / contract.SERVER_KEY_FILE,
            client_ca=config.pki_dir / contract.CA_CERT_FILE,
        )
        front = GatewayListener(context, grpc_socket=config.grpc_socket, tunnel=tunnel_handler)
        await front.start(config.listen_host, config.listen_port)
        self._closers.append(front.close)

    def _start_reconciling(self, service: SandboxService) -> None:
        reconciler = Reconciler(service, interval=self.config.reconcile_interval)

        async def forever() -> None:
            try:
                await reconciler.startup()
            except OpenShellError as exc:
                log.warning("startup reconciliation failed: %s", exc.message)
            await reconciler.run()

        task = asyncio.create_task(forever())

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._closers.append(cancel)

    async def stop(self) -> None:
        """Undo :meth:`start` in reverse order (what was started, only)."""
        self.config.ready_marker.unlink(missing_ok=True)
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("error while stopping")


def _async(function: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        function()

    return call


async def serve(config: ServerConfig) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    gateway = Gateway(config)
    try:
        await gateway.start()
        await stopped.wait()
        log.info("stopping")
    finally:
        await gateway.stop()
    log.info("stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        config = ServerConfig.from_env(os.environ)
    except UsageError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_USAGE
    if config.faults:
        log.warning(
            "fault switches on (testing aid): %s", ", ".join(f.value for f in config.faults)
        )
    try:
        asyncio.run(serve(config))
    except StateError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STATE
    except OpenShellError as exc:
        log.error("gateway failed: %s", exc)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
