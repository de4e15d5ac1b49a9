"""Gateway drivers: how the plugin deploys and operates the gateway under test.

A driver does what a user of that gateway does (``gateway start``, ``stop``, ``destroy``), so a
scenario exercises the gateway's real recovery paths. The built-in :class:`ReferenceDriver` drives
the embedded reference gateway through :mod:`openshell_core.gateway`; a downstream project registers
its own through the ``pytest_openshell_gateway_driver`` hook, for example one that runs a different
gateway CLI.
"""

from __future__ import annotations

import enum
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import NotFoundError, OpenShellError
from openshell_core.faults import ENV_VAR as FAULTS_ENV
from openshell_core.faults import Fault, format_faults
from openshell_core.gateway import DeployOptions, deploy, destroy, names, stop
from openshell_core.gateway.reconcile import STATE_DIR
from openshell_core.host.metadata import remove_gateway_files
from openshell_core.wire.contract import (
    GATEWAY_SECRET_STATE,
    RUN_ID_ENV,
    SANDBOX_ROLE,
    SANDBOX_TOKEN_KEY_FILE,
    TRANSPORT_SUPERVISOR,
    TRANSPORTS,
)
from pytest_openshell.options import GatewayOptions

#: The gateway's persistent secret state, relative to its state directory on the volume.
STATE_FILES = GATEWAY_SECRET_STATE
#: The name :meth:`ReportsStateDigests.state_digests` gives the digest of the key that signs the
#: sandbox tokens (property 17); a driver whose gateway has such a key reports it under this name.
TOKEN_KEY_DIGEST = SANDBOX_TOKEN_KEY_FILE


@dataclass(frozen=True)
class GatewaySpec:
    """What a test asks for: one gateway, with a unique name and port, deployed with ``options``."""

    name: str
    port: int
    run_id: str
    options: GatewayOptions = field(default_factory=GatewayOptions)

    @property
    def image(self) -> str:
        return self.options.images.gateway

    @property
    def upgrade_image(self) -> str:
        return self.options.images.gateway_upgrade

    @property
    def sandbox_image(self) -> str:
        return self.options.images.sandbox

    @property
    def faults(self) -> frozenset[Fault]:
        return self.options.faults

    @property
    def health_timeout(self) -> float:
        return self.options.health_timeout

    @property
    def api_timeout(self) -> float:
        return self.options.api_timeout


@dataclass
class GatewayHandle:
    """A deployed gateway: its names, where it answers, and where its host-side files are."""

    spec: GatewaySpec
    config_home: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def upgrade_image(self) -> str:
        return self.spec.upgrade_image

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.spec.port}"

    @property
    def container_name(self) -> str:
        return names.container_name(self.spec.name)

    @property
    def volume_name(self) -> str:
        return names.volume_name(self.spec.name)

    @property
    def network_name(self) -> str:
        return names.network_name(self.spec.name)

    @property
    def node_name(self) -> str:
        return names.node_name(self.spec.name)

    @property
    def env(self) -> dict[str, str]:
        """Environment entries that point openshell tools at this gateway's host-side files."""
        return {"XDG_CONFIG_HOME": str(self.config_home)}


@runtime_checkable
class GatewayDriver(Protocol):
    """Operates gateways the way their users do. Four verbs; the core scenarios need nothing else.

    A driver may offer more: each optional ability is a small protocol below (:class:`Ability`
    names them). A driver declares one by implementing its method (or, better, by subclassing the
    protocol, so that mypy checks the signature); the plugin finds it with ``isinstance``. A
    scenario or check that needs an ability the driver lacks is skipped with the reason.
    """

    def deploy(self, spec: GatewaySpec) -> GatewayHandle:
        """Deploy a fresh gateway and wait until its API answers."""
        ...

    def start(self, gateway: GatewayHandle, *, image: str | None = None) -> None:
        """``gateway start``: resume from whatever Docker holds (``image`` for a new container)."""
        ...

    def stop(self, gateway: GatewayHandle) -> None:
        """``gateway stop``: keep the volume, the network and the host-side files."""
        ...

    def destroy(self, gateway: GatewayHandle) -> None:
        """``gateway destroy``: remove everything, host-side files included."""
        ...


@runtime_checkable
class ChoosesTransport(Protocol):
    """A driver that deploys each gateway with the transport its spec names
    (``spec.options.transport``), one of :attr:`transports`. A driver without it cannot choose:
    a run asking for several transports is refused, and with one the gateway speaks its own."""

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports this driver's gateways can be deployed with."""
        ...


def check_transports(driver: object, asked: tuple[str, ...]) -> str | None:
    """Why ``driver`` cannot run the transports ``asked`` for (None: it can)."""
    name = type(driver).__name__
    if isinstance(driver, ChoosesTransport):
        unknown = [transport for transport in asked if transport not in driver.transports]
        if unknown:
            return (
                f"--openshell-transport={','.join(asked)}: the gateway driver {name} deploys "
                f"{' or '.join(driver.transports)} only, not {', '.join(unknown)}; run it with "
                f"--openshell-transport={driver.transports[0]}"
            )
        return None
    if len(asked) > 1:
        return (
            f"--openshell-transport={','.join(asked)}: the gateway driver {name} cannot choose "
            "its gateways' transport (it has no 'transports' attribute: protocol "
            "pytest_openshell.drivers.ChoosesTransport), so one run cannot check several; run "
            "it once per transport with the gateway configured for it, and one transport named"
        )
    return None


# -- optional abilities ----------------------------------------------------------------------


@runtime_checkable
class CanRecreate(Protocol):
    """``gateway start --recreate``: wipe the gateway's state and start it fresh, same name and
    port (the ``recreate`` negative control)."""

    def recreate(self, gateway: GatewayHandle) -> None: ...


@runtime_checkable
class CanFailResume(Protocol):
    """A resume made to fail on purpose (the ``resume-failure`` scenario)."""

    def start_failing(self, gateway: GatewayHandle) -> None: ...


@runtime_checkable
class CanFailDeploy(Protocol):
    """A fresh deploy made to fail on purpose (property 10: it must leave nothing behind)."""

    def deploy_failing(self, spec: GatewaySpec) -> None: ...


@runtime_checkable
class CanForgetHostFiles(Protocol):
    """Delete the gateway's host-side metadata, as a user wiping ``~/.config`` would."""

    def forget(self, gateway: GatewayHandle) -> None: ...


@runtime_checkable
class CanAutoBootstrap(Protocol):
    """``sandbox create`` with no resolvable gateway, which must resume it; returns the name of
    the sandbox it made."""

    def auto_bootstrap(self, gateway: GatewayHandle) -> str: ...


@runtime_checkable
class ReportsStateDigests(Protocol):
    """A digest of each piece of the gateway's persistent secret state (handshake secret, CA,
    certificates), never the values; readable while the gateway is stopped too."""

    def state_digests(self, gateway: GatewayHandle) -> dict[str, str]: ...


@runtime_checkable
class ReportsDownReason(Protocol):
    """Why the gateway is down for good (None while it may still come back), so that waits end
    early instead of at their deadline."""

    def down_reason(self, gateway: GatewayHandle) -> str | None: ...


@runtime_checkable
class ListsSandboxContainers(Protocol):
    """The names of the gateway's sandbox containers (only running ones with ``running``), oldest
    first: a scenario that disrupts "the first" sandboxes hits those made before it began, not
    those a workload creates while it runs."""

    def sandbox_containers(self, gateway: GatewayHandle, *, running: bool = False) -> list[str]: ...


@runtime_checkable
class SetsTokenLifetime(Protocol):
    """Deploys gateways whose sandbox tokens live ``options.sandbox_token_ttl`` seconds, and says
    how long the tokens of a gateway deployed with ``options`` live: None when its supervisors
    hold no token that can expire (the ``long-downtime`` scenario outlasts them)."""

    def token_lifetime(self, options: GatewayOptions) -> float | None: ...


class Ability(enum.Enum):
    """An optional ability of a gateway driver: what a scenario or a check may need beyond the
    four verbs. The value is the name used in messages and in docs/conformance.md."""

    RECREATE = "recreate"
    FAIL_RESUME = "fail-resume"
    FAIL_DEPLOY = "fail-deploy"
    FORGET_HOST_FILES = "forget-host-files"
    AUTO_BOOTSTRAP = "auto-bootstrap"
    STATE_DIGESTS = "state-digests"
    DOWN_REASON = "down-reason"
    SANDBOX_CONTAINERS = "sandbox-containers"
    TOKEN_LIFETIME = "token-lifetime"

    @property
    def protocol(self) -> type:
        """The protocol a driver with this ability satisfies."""
        return _PROTOCOLS[self]

    @property
    def method(self) -> str:
        """The method that provides it."""
        return _METHODS[self]

    def of(self, driver: object) -> bool:
        """Whether ``driver`` has this ability."""
        return isinstance(driver, self.protocol)

    def lacking(self, driver: object) -> str:
        """Why a driver without this ability cannot do what needs it."""
        return (
            f"the gateway driver {type(driver).__name__} lacks the ability {self.value!r} "
            f"(a {self.method}() method: protocol "
            f"pytest_openshell.drivers.{self.protocol.__name__})"
        )


_PROTOCOLS: dict[Ability, type] = {
    Ability.RECREATE: CanRecreate,
    Ability.FAIL_RESUME: CanFailResume,
    Ability.FAIL_DEPLOY: CanFailDeploy,
    Ability.FORGET_HOST_FILES: CanForgetHostFiles,
    Ability.AUTO_BOOTSTRAP: CanAutoBootstrap,
    Ability.STATE_DIGESTS: ReportsStateDigests,
    Ability.DOWN_REASON: ReportsDownReason,
    Ability.SANDBOX_CONTAINERS: ListsSandboxContainers,
    Ability.TOKEN_LIFETIME: SetsTokenLifetime,
}
_METHODS: dict[Ability, str] = {
    Ability.RECREATE: "recreate",
    Ability.FAIL_RESUME: "start_failing",
    Ability.FAIL_DEPLOY: "deploy_failing",
    Ability.FORGET_HOST_FILES: "forget",
    Ability.AUTO_BOOTSTRAP: "auto_bootstrap",
    Ability.STATE_DIGESTS: "state_digests",
    Ability.DOWN_REASON: "down_reason",
    Ability.SANDBOX_CONTAINERS: "sandbox_containers",
    Ability.TOKEN_LIFETIME: "token_lifetime",
}


def abilities_of(driver: object) -> frozenset[Ability]:
    """Every optional ability ``driver`` has."""
    return frozenset(ability for ability in Ability if ability.of(driver))


class ReferenceDriver(
    GatewayDriver,
    CanRecreate,
    CanFailResume,
    CanFailDeploy,
    CanForgetHostFiles,
    CanAutoBootstrap,
    ReportsStateDigests,
    ReportsDownReason,
    ListsSandboxContainers,
    SetsTokenLifetime,
    ChoosesTransport,
):
    """Drives the embedded reference gateway in-process, through :mod:`openshell_core.gateway`.

    Host-side files go under the run's own config home (never the user's ``~/.config``), passed
    explicitly rather than through this process's environment.
    """

    @property
    def transports(self) -> tuple[str, ...]:
        """Both: the reference gateway's is chosen at its first deploy and kept on its volume."""
        return TRANSPORTS

    def __init__(self, engine: Engine, config_home: Path) -> None:
        self.engine = engine
        self.config_home = config_home

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_CONFIG_HOME": str(self.config_home)}

    def _options(
        self, spec: GatewaySpec, *, port: int | None, image: str | None = None
    ) -> DeployOptions:
        return DeployOptions(
            name=spec.name,
            image=image or spec.image,
            port=port,
            sandbox_image=spec.sandbox_image,
            run_id=spec.run_id,
            faults=spec.faults,
            health_timeout=spec.health_timeout,
            api_timeout=spec.api_timeout,
            config_env=self.env,
            transport=spec.options.transport,
            sandbox_token_ttl=spec.options.sandbox_token_ttl,
        )

    def deploy(self, spec: GatewaySpec) -> GatewayHandle:
        deploy(self.engine, self._options(spec, port=spec.port))
        return GatewayHandle(spec, self.config_home)

    def start(self, gateway: GatewayHandle, *, image: str | None = None) -> None:
        # A user's bare `gateway start`: the port comes from the gateway's metadata.
        deploy(self.engine, self._options(gateway.spec, port=None, image=image))

    def stop(self, gateway: GatewayHandle) -> None:
        stop(self.engine, gateway.name, env=self.env)

    def destroy(self, gateway: GatewayHandle) -> None:
        destroy(self.engine, gateway.name, env=self.env)

    # -- what some scenarios need beyond the four verbs ------------------------------------------

    def recreate(self, gateway: GatewayHandle) -> None:
        """``gateway start --recreate``: wipe and start fresh under the same name and port."""
        deploy(
            self.engine, replace(self._options(gateway.spec, port=gateway.spec.port), recreate=True)
        )

    def start_failing(self, gateway: GatewayHandle) -> None:
        """A resume that fails: its health deadline cannot be met."""
        deploy(self.engine, replace(self._options(gateway.spec, port=None), health_timeout=0.01))

    def deploy_failing(self, spec: GatewaySpec) -> None:
        """A fresh deploy that fails: its health deadline cannot be met."""
        deploy(self.engine, replace(self._options(spec, port=spec.port), health_timeout=0.01))

    def forget(self, gateway: GatewayHandle) -> None:
        """Delete the gateway's host-side metadata, as a user wiping ``~/.config`` would."""
        remove_gateway_files(gateway.name, self.env)

    def auto_bootstrap(self, gateway: GatewayHandle) -> str:
        """``sandbox create`` with no resolvable gateway: the CLI must resume it, never wipe it.
        Returns the name of the sandbox it created."""
        env = {
            **os.environ,
            **self.env,
            "DOCKER_HOST": self.engine.host,
            FAULTS_ENV: format_faults(gateway.spec.faults),
            RUN_ID_ENV: gateway.spec.run_id,
        }
        result = subprocess.run(
            [
                cli_path(),
                "-q",
                "sandbox",
                "create",
                "--gateway",
                gateway.name,
                "--no-wait",
                f"boot-{gateway.name[-6:]}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if result.returncode != 0:
            raise OpenShellError(
                f"sandbox create (auto-bootstrap) failed with exit code "
                f"{result.returncode}:\n{result.stderr[-2000:]}"
            )
        return result.stdout.split("\t", 1)[0].strip()

    def state_digests(self, gateway: GatewayHandle) -> dict[str, str]:
        """SHA-256 of the handshake secret and of every PKI file on the gateway's volume, read
        through the engine from its container (running or stopped)."""
        found = self.engine.read_container_files(gateway.container_name, STATE_DIR)
        missing = [name for name in STATE_FILES if name not in found]
        if missing:
            raise NotFoundError("file", f"{gateway.container_name}:{STATE_DIR}/{missing[0]}")
        return {name: hashlib.sha256(found[name]).hexdigest() for name in STATE_FILES}

    def down_reason(self, gateway: GatewayHandle) -> str | None:
        """Why the gateway container is down with nothing to bring it back (None: it runs, or
        Docker may still restart it)."""
        found = self.engine.inspect_container(gateway.container_name)
        if found is None:
            return f"the gateway container {gateway.container_name} does not exist"
        state = found.get("State") or {}
        if state.get("Running") or state.get("Restarting"):
            return None
        policy = ((found.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
        if policy != "no":
            return None  # Docker may still start it (inspect does not say whether it will)
        return (
            f"the gateway container {gateway.container_name} is {state.get('Status')} "
            f"(exit code {state.get('ExitCode')}) and its restart policy {policy!r} will not "
            "start it again"
        )

    def token_lifetime(self, options: GatewayOptions) -> float | None:
        """The ``supervisor`` transport's tokens live ``options.sandbox_token_ttl`` seconds (0 or
        None: they never expire); in ``nssh1`` the gateway dials its supervisors and signs each
        connection with the handshake secret, so they hold no token at all."""
        if options.transport != TRANSPORT_SUPERVISOR:
            return None
        return options.sandbox_token_ttl or None

    def sandbox_containers(self, gateway: GatewayHandle, *, running: bool = False) -> list[str]:
        """The names of the gateway's sandbox containers (only running ones with ``running``),
        found by their labels, oldest first."""
        found = self.engine.list_containers(
            label_filters=[
                f"{labels.MANAGED_BY}={labels.MANAGER}",
                f"{labels.GATEWAY}={gateway.name}",
                f"{labels.ROLE}={SANDBOX_ROLE}",
            ],
            all=not running,
        )
        return [str(c["Names"][0]).lstrip("/") for c in sorted(found, key=_creation_order)]


def cli_path() -> str:
    """The ``pytest-openshell`` script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("pytest-openshell")
    return str(beside) if beside.exists() else "pytest-openshell"


def _creation_order(container: dict[str, Any]) -> tuple[int, str]:
    """Oldest first; the engine counts creation in whole seconds, so names break ties."""
    return int(container.get("Created", 0)), str(container["Names"][0])
