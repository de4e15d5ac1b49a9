"""Support for the reference gateway's integration tests (no tests here).

:class:`GatewayUnderTest` deploys a gateway with :func:`openshell_core.gateway.deploy` (which writes
the host-side metadata and mTLS files the SDK and :class:`~openshell_core.host.api_client.GatewayClient`
read) and disrupts it with plain engine operations. Every object carries the test run's id; a run
removes what it made when it ends (and the sweep of dead runs catches a killed one).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import ReadinessTimeout
from openshell_core.faults import parse_faults
from openshell_core.gateway import DeployOptions, DeployOutcome, deploy
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.metadata import set_active_gateway
from openshell_core.retry import poll_until
from openshell_core.runs import RunLease, new_run_id, remove_run_objects, runs_dir

T = TypeVar("T")

GATEWAY_IMAGE = "openshell-gateway:v1"
UPGRADE_IMAGE = "openshell-gateway:v2"
SANDBOX_IMAGE = "openshell-sandbox:v1"
STATE = "/var/lib/openshell"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def lab_run(engine: Engine) -> Iterator[str]:
    """A run id with a live lease; everything labelled with it is removed at the end."""
    run_id = new_run_id()
    with RunLease(run_id, runs_dir()).held():
        try:
            yield run_id
        finally:
            remove_lab_objects(engine, run_id)


def remove_lab_objects(engine: Engine, run_id: str) -> None:
    """Remove a run's objects, its gateways first: a gateway still running would make again the
    sandbox containers removed under it (that is its job)."""
    gateways = engine.list_containers(
        label_filters=[f"{labels.RUN_ID}={run_id}", f"{labels.ROLE}=gateway"]
    )
    for container in gateways:
        engine.remove_container(str(container["Id"]))
    remove_run_objects(engine, [run_id])


@contextlib.contextmanager
def config_home(path: Path) -> Iterator[None]:
    """Point ``$XDG_CONFIG_HOME`` (where host-side gateway files live) at ``path`` meanwhile."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = before


@dataclass
class GatewayUnderTest:
    """One gateway under test, deployed with :func:`openshell_core.gateway.deploy` (host-side
    files under ``config_home``), and the plain engine operations that disrupt it."""

    engine: Engine
    name: str
    run_id: str
    config_home: Path
    port: int = field(default_factory=free_port)
    image: str = GATEWAY_IMAGE
    faults: str = ""
    #: ``--transport`` of every deploy (None: the recorded one, else the default)
    transport: str | None = None
    sandbox_token_ttl: float | None = None
    ssh_session_ttl: float | None = None

    @property
    def container(self) -> str:
        return f"openshell-cluster-{self.name}"

    @property
    def gateway_dir(self) -> Path:
        return self.config_home / "openshell" / "gateways" / self.name

    def deploy(self, *, image: str | None = None, faults: str | None = None) -> DeployOutcome:
        """``gateway start``: fresh, resume or already running, whatever Docker holds."""
        self.image = image or self.image
        self.faults = self.faults if faults is None else faults
        options = DeployOptions(
            name=self.name,
            image=self.image,
            port=self.port,
            sandbox_image=SANDBOX_IMAGE,
            run_id=self.run_id,
            faults=parse_faults(self.faults),
            health_timeout=60,
            transport=self.transport,
            sandbox_token_ttl=self.sandbox_token_ttl,
            ssh_session_ttl=self.ssh_session_ttl,
        )
        with config_home(self.config_home):
            outcome = deploy(self.engine, options)
            set_active_gateway(self.name)
        return outcome

    def start(self) -> None:
        self.deploy()

    def restart(self) -> None:
        self.engine.stop_container(self.container, timeout=10)
        self.deploy()

    def kill(self) -> None:
        self.engine.kill_container(self.container)

    def remove_container(self) -> None:
        self.engine.remove_container(self.container)

    def read(self, relative: str) -> bytes:
        """A file of the gateway's state directory (works while it is stopped too)."""
        return self.engine.read_container_file(self.container, f"{STATE}/{relative}")

    def read_volume(self, relative: str) -> bytes:
        """A file of the gateway's volume, read through a container that is never started."""
        reader = f"{self.container}-reader"
        self.engine.create_container(
            name=reader,
            image=GATEWAY_IMAGE,
            labels=labels.ownership(gateway=self.name, role="reader", run_id=self.run_id),
            network="none",
            binds=[f"{self.container}:{STATE}:ro"],
        )
        try:
            return self.engine.read_container_file(reader, f"{STATE}/{relative}")
        finally:
            self.engine.remove_container(reader)

    def logs(self, tail: int = 40) -> list[str]:
        return self.engine.container_logs(self.container, tail=tail)

    def client(self, mtls: Path | None = None) -> GatewayClient:
        """A client with the host-side mTLS files (or copies of them kept in ``mtls``)."""
        mtls = mtls or self.gateway_dir / "mtls"
        return GatewayClient(
            f"https://127.0.0.1:{self.port}",
            ca=(mtls / "ca.crt").read_bytes(),
            cert=(mtls / "tls.crt").read_bytes(),
            key=(mtls / "tls.key").read_bytes(),
        )

    def python(self, code: str) -> str:
        """Run Python in the gateway container; returns its output."""
        exit_code, output = self.engine.exec_run(self.container, ["python3", "-c", code])
        assert exit_code == 0, output.decode(errors="replace")
        return output.decode()


def wait_for(predicate: Callable[[], T], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    :raises AssertionError: at the deadline, with the last value seen.
    """
    try:
        return poll_until(predicate, bool, timeout=timeout, what=what)
    except ReadinessTimeout as exc:
        raise AssertionError(str(exc)) from exc
