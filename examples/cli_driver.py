"""A worked example: run pytest-openshell against a gateway that a command line operates.

A downstream project whose gateway has its own CLI writes a module like this one, then runs the
conformance suite against it with one command::

    pytest --pyargs pytest_openshell.conformance -p cli_driver --openshell-gateway=cli

(``-p`` loads this module as a plugin; it must be importable, e.g. from the current directory
with ``PYTHONPATH=.``). Here the CLI is this project's own ``pytest-openshell gateway ...``; point
``GATEWAY_CLI`` at yours and adapt the argument lists.

The driver declares what it can do beyond the four verbs by subclassing the ability protocols of
:mod:`pytest_openshell.drivers` (here: name its sandbox containers, report digests of the gateway's
secret state); checks that need an ability it lacks are skipped with the reason. The module also
adds one scenario of its own, ``container-restart``, with the traits that tell the suite which
checks apply to it (all of those that apply to ``kill``: the same things happen to the gateway's
container and the sandboxes).

It declares no ``transports`` (protocol :class:`pytest_openshell.drivers.ChoosesTransport`): its
``gateway start`` names none, so the gateway speaks its own default, and a run asking for several
transports (``--openshell-transport=nssh1,supervisor``) is refused with the reason. A driver whose
CLI takes a transport declares the ones it can deploy and passes ``spec.options.transport`` on.

pytest-openshell's own tests run this file (``tests/test_plugin_extension.py``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_openshell import (
    GatewayFate,
    GatewayHandle,
    GatewaySpec,
    HeldSessionFate,
    OpenShellSession,
    SandboxFate,
    Scenario,
    ScenarioRun,
    StateOutcome,
    Traits,
)
from pytest_openshell.drivers import (
    TOKEN_KEY_DIGEST,
    GatewayDriver,
    ListsSandboxContainers,
    ReportsStateDigests,
)

#: The command line that operates the gateway (default: the one installed beside this Python).
_BESIDE = Path(sys.executable).with_name("pytest-openshell")
GATEWAY_CLI = os.environ.get("GATEWAY_CLI") or (
    str(_BESIDE) if _BESIDE.exists() else "pytest-openshell"
)


#: The gateway's secret state, as files in its container (what ``state_digests`` hashes).
STATE_FILES = (
    "/var/lib/openshell/secrets/ssh-handshake",
    "/var/lib/openshell/pki/ca.crt",
    "/var/lib/openshell/pki/server.crt",
    "/var/lib/openshell/pki/client.crt",
)
#: The key that signs sandbox tokens (property 17 compares its digest, never the key).
TOKEN_KEY_FILE = "/var/lib/openshell/secrets/sandbox-token-key"


class CliDriver(GatewayDriver, ListsSandboxContainers, ReportsStateDigests):
    """Deploys, starts, stops and destroys gateways through ``GATEWAY_CLI gateway ...``: the
    scenarios then exercise exactly what that CLI's users run."""

    def __init__(self, session: OpenShellSession) -> None:
        self.session = session
        #: every command this driver ran, one per line (tests read it)
        self.log = Path(os.environ.get("CLI_DRIVER_LOG") or session.run_dir / "cli-driver.log")

    def _gateway(self, *args: str) -> None:
        command = [GATEWAY_CLI, "-q", "gateway", *args]
        env = {
            **os.environ,
            "DOCKER_HOST": self.session.engine.host,
            # host-side files of the run's gateways, never the user's own ~/.config
            "XDG_CONFIG_HOME": str(self.session.config_home),
            # labels what the CLI creates, so the run (or a sweep) removes it
            "OPENSHELL_RUN_ID": self.session.run_id,
        }
        with self.log.open("a") as log:
            log.write(shlex.join(command) + "\n")
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"`{shlex.join(command)}` failed with exit code {result.returncode}:\n"
                f"{result.stderr[-2000:]}"
            )

    def deploy(self, spec: GatewaySpec) -> GatewayHandle:
        self._gateway(
            "start",
            "--name",
            spec.name,
            "--port",
            str(spec.port),
            "--image",
            spec.image,
            "--sandbox-image",
            spec.sandbox_image,
        )
        return GatewayHandle(spec, self.session.config_home)

    def start(self, gateway: GatewayHandle, *, image: str | None = None) -> None:
        # A bare `gateway start`: the port comes from the gateway's own metadata.
        self._gateway("start", "--name", gateway.name, "--image", image or gateway.spec.image)

    def stop(self, gateway: GatewayHandle) -> None:
        self._gateway("stop", "--name", gateway.name)

    def destroy(self, gateway: GatewayHandle) -> None:
        self._gateway("destroy", "--name", gateway.name)

    # -- abilities: what this gateway lets a test see beyond its CLI --

    def sandbox_containers(self, gateway: GatewayHandle, *, running: bool = False) -> list[str]:
        """The gateway labels its sandbox containers with its name; oldest first."""
        found = self.session.engine.list_containers(
            label_filters=[f"openshell.ai/gateway={gateway.name}", "openshell.ai/role=sandbox"],
            all=not running,
        )
        found.sort(key=lambda container: (int(container.get("Created", 0)), container["Names"][0]))
        return [str(container["Names"][0]).lstrip("/") for container in found]

    def state_digests(self, gateway: GatewayHandle) -> dict[str, str]:
        """SHA-256 of each secret-state file, read from the gateway's container (never the
        values themselves)."""
        engine = self.session.engine
        digests = {
            path: hashlib.sha256(
                engine.read_container_file(gateway.container_name, path)
            ).hexdigest()
            for path in STATE_FILES
        }
        # The sandbox-token signing key, under the name property 17 reads it by.
        key = engine.read_container_file(gateway.container_name, TOKEN_KEY_FILE)
        digests[TOKEN_KEY_DIGEST] = hashlib.sha256(key).hexdigest()
        return digests


@pytest.hookimpl
def pytest_openshell_gateway_driver(target: str, session: OpenShellSession) -> CliDriver | None:
    return CliDriver(session) if target == "cli" else None


def _stop_container(run: ScenarioRun) -> None:
    run.engine.stop_container(run.gateway.container_name, timeout=10)


def _start_container(run: ScenarioRun) -> None:
    run.engine.start_container(run.gateway.container_name)


@pytest.hookimpl
def pytest_openshell_scenarios(config: pytest.Config) -> list[Scenario]:
    return [
        Scenario(
            "container-restart",
            "docker stop, then docker start, of the gateway container (no CLI at all)",
            _stop_container,
            _start_container,
            traits=Traits(
                gateway=GatewayFate.RESTARTED,  # the same container, stopped and started
                sandboxes=SandboxFate.KEPT,  # the sandboxes keep running meanwhile
                state=StateOutcome.SURVIVES,
                held_session=HeldSessionFate.CARRIES_ON,
            ),
        )
    ]
