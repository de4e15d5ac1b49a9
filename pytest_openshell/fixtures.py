"""The objects behind the plugin's fixtures: gateway and sandbox factories, the SSH helper, and the
per-test scenario handle. Each works without pytest too (a script can drive them directly)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from openshell_core import sshproxy
from openshell_core.client import SandboxInfo
from openshell_core.sandbox.supervisor import AUTHORIZED_KEYS_ENV
from pytest_openshell.artefacts import ARTEFACTS_KEY, Artefacts
from pytest_openshell.drivers import GatewayHandle
from pytest_openshell.scenarios import Scenario, ScenarioRun, execute
from pytest_openshell.summary import RECOVERY

if TYPE_CHECKING:
    from pytest_openshell.session import OpenShellSession

log = logging.getLogger("openshell.plugin")


@dataclass
class GatewayFactory:
    """Deploys gateways with unique names and ports; destroys them at the end of the session."""

    session: OpenShellSession
    made: list[GatewayHandle] = field(default_factory=list)

    def deploy(self, label: str = "gw", **overrides: Any) -> GatewayHandle:
        spec = self.session.gateway_spec(label, **overrides)
        with self.session.access.shared():
            handle = self.session.driver.deploy(spec)
        self.made.append(handle)
        return handle

    def forget(self, handle: GatewayHandle) -> None:
        """Stop tracking a gateway (a test destroyed it itself)."""
        if handle in self.made:
            self.made.remove(handle)

    def destroy_all(self) -> None:
        if self.session.settings.keep:
            for handle in self.made:
                log.warning(
                    "openshell: kept gateway %s at %s (config home %s)",
                    handle.name,
                    handle.endpoint,
                    handle.config_home,
                )
            return
        with self.session.access.shared():
            for handle in self.made:
                try:
                    self.session.driver.destroy(handle)
                except Exception as exc:
                    log.warning("openshell: could not destroy gateway %s: %s", handle.name, exc)
        self.made.clear()


@dataclass
class ScenarioFixture:
    """One scenario bound to one test: ``run(gateway)`` disrupts, recovers and times it."""

    session: OpenShellSession
    scenario: Scenario
    node: pytest.Item
    runs: list[ScenarioRun] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.scenario.key

    def run(self, gateway: GatewayHandle, *, deadline: float | None = None) -> ScenarioRun:
        """Disrupt ``gateway``, recover it the way a user would, and wait for its API.

        :param deadline: seconds the recovery may take (default: ``--openshell-recovery-timeout``).
        """
        artefacts = Artefacts(self.session.engine, gateway.name)
        self.node.stash.setdefault(ARTEFACTS_KEY, []).append(artefacts)
        run = ScenarioRun(
            self.scenario, gateway, self.session.driver, self.session.engine, artefacts
        )
        hook = self.session.config.hook
        execute(
            run,
            api_ready=lambda: self.session.driver_ready(gateway),
            deadline=deadline or self.session.settings.recovery_timeout,
            on_disrupted=lambda current: hook.pytest_openshell_disrupted(run=current),
        )
        hook.pytest_openshell_recovered(run=run)
        self.runs.append(run)
        return run

    def report(self) -> None:
        for run in self.runs:
            self.node.user_properties.append((RECOVERY, run.recovery_seconds))


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
        wait: bool = True,
    ) -> SandboxInfo:
        """Create a sandboxes the run's SSH key may log into; wait until it is Ready."""
        wanted = {AUTHORIZED_KEYS_ENV: self.session.user_public_key(), **(environment or {})}
        with self.session.client(gateway) as client:
            info = client.create_sandbox(name, environment=wanted)
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
    """Real OpenSSH through the gateway's tunnel."""

    session: OpenShellSession
    held: list[Any] = field(default_factory=list)

    def argv(self, gateway: GatewayHandle, sandbox: str, remote: Sequence[str] = ()) -> list[str]:
        """The ``ssh`` command line into ``sandbox`` (a fresh session token each time)."""
        with self.session.client(gateway) as client:
            info = client.get_sandbox(sandbox)
            session = client.create_ssh_session(sandbox)
        known_hosts = gateway.config_home / "known_hosts.d" / info.id
        return sshproxy.ssh_command(
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

    def close(self) -> None:
        deadline = time.monotonic() + 5
        for process in self.held:
            with contextlib.suppress(Exception):
                process.terminate()
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.held.clear()
