"""The plugin's options: one table, three sources.

Each option has a command-line flag ``--openshell-X``, an ini key ``openshell_X`` and an
environment variable ``PYTEST_OPENSHELL_X`` (prefixed, because upstream's CLI already reads
``OPENSHELL_GATEWAY`` with another meaning). The command line wins over the environment, which wins
over the ini file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core.engine import EngineMode
from openshell_core.errors import UsageError
from openshell_core.faults import Fault, parse_faults
from openshell_core.images import ImageSet
from openshell_core.wire.contract import (
    DEFAULT_TRANSPORT,
    TRANSPORT_NSSH1,
    TRANSPORT_SUPERVISOR,
    TRANSPORTS,
)
from pytest_openshell.strike import Moment, parse_moment
from pytest_openshell.transports import scenario_id

GROUP = "openshell"
REFERENCE_TARGET = "reference"
#: The built-in target of a gateway on a Kubernetes cluster (pytest_openshell.kube_driver).
KUBE_TARGET = "kubernetes"


@dataclass(frozen=True)
class _Option:
    name: str  # the part after --openshell-
    help: str
    default: str | None = None
    metavar: str = "VALUE"
    #: the value of the bare flag, for an option whose value may be left out
    optional: str | None = None

    @property
    def dest(self) -> str:
        return "openshell_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "PYTEST_OPENSHELL_" + self.name.replace("-", "_").upper()


OPTIONS: tuple[_Option, ...] = (
    _Option(
        "engine",
        "Docker engine: auto (one that answers, else a private dockerd), host "
        "(DOCKER_HOST / context / default socket) or private",
        "auto",
        "MODE",
    ),
    _Option("image", "gateway image to deploy", ImageSet().gateway, "REF"),
    _Option(
        "upgrade-image",
        "gateway image the image-upgrade scenario moves to",
        ImageSet().gateway_upgrade,
        "REF",
    ),
    _Option("sandbox-image", "sandbox image the gateway runs", ImageSet().sandbox, "REF"),
    _Option(
        "scenarios",
        "comma-separated scenario keys, 'core' (the default set of docs/conformance.md) or 'all'",
        "core",
        "KEYS",
    ),
    _Option(
        "faults", "fault switches to turn on in the reference gateway (testing aid)", "", "NAMES"
    ),
    _Option(
        "artifacts",
        "directory for failure artefacts (logs, inspect output, events)",
        "openshell-artifacts",
        "DIR",
    ),
    _Option(
        "keep",
        "leave the run's gateways and sandboxes up at the end and print how to reach them: "
        "'failed' (what a bare --openshell-keep means) when a test failed, 'always', or 'never'",
        "never",
        "WHEN",
        optional="failed",
    ),
    _Option(
        "build", "build missing images before the run (off: a missing image fails)", "yes", "yes|no"
    ),
    _Option(
        "transport",
        f"how the reference gateway reaches its sandboxes: {TRANSPORT_NSSH1} (it dials each "
        f"supervisor, the seeds' transport) or {TRANSPORT_SUPERVISOR} (each supervisor dials "
        "out, upstream's today), or a comma list of both: the run then runs every scenario once "
        "per transport (test ids [SCENARIO-TRANSPORT]) and the summary has a table per transport. "
        "A driver that cannot choose its gateway's transport refuses a list (the kubernetes "
        f"target speaks {TRANSPORT_NSSH1} only; a driver without a 'transports' attribute runs "
        "its own gateway's)",
        DEFAULT_TRANSPORT,
        "NAMES",
    ),
    _Option("health-timeout", "seconds to wait for a gateway's Docker health", "180", "SECONDS"),
    _Option("api-timeout", "seconds to wait for a gateway's API", "90", "SECONDS"),
    _Option(
        "recovery-timeout",
        "seconds a scenario's recovery may take before it fails",
        "300",
        "SECONDS",
    ),
    _Option(
        "kube-context",
        "kubernetes target: the kube config context of the cluster (default: the current one)",
        None,
        "NAME",
    ),
    _Option(
        "kube-namespace",
        "kubernetes target: the namespace to deploy in, ours or absent (default: a fresh one per "
        "run and worker, deleted at the end, swept after a crashed run)",
        None,
        "NAME",
    ),
    _Option(
        "kube-endpoint",
        "kubernetes target: HOST:PORT of the gateway Service's node port the user reaches it by "
        "(default: a port-forward the plugin holds)",
        None,
        "HOST:PORT",
    ),
    _Option(
        "settle",
        "seconds to keep re-checking a recovered state ('Ready, then Error two "
        "seconds later' is a failure)",
        "5",
        "SECONDS",
    ),
    _Option(
        "workload",
        "run client threads against each scenario's gateway during its disruption and check "
        "their history (property 18): 'on' (what a bare --openshell-workload means) or 'off'",
        "off",
        "on|off",
        optional="on",
    ),
    _Option(
        "seed",
        "seed of the workload's choices (default: a new one per run, printed when a check fails)",
        "",
        "N",
    ),
    _Option(
        "strike",
        "when the scenario strikes, with the workload on: between (operations), create, append "
        "or seeding (default: drawn from the seed)",
        "",
        "MOMENT",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        GROUP,
        "openshell: prove a gateway comes back and loses nothing (pytest-openshell). Every "
        "option is also an ini key openshell_* and an environment variable PYTEST_OPENSHELL_*",
    )
    group.addoption(
        "--openshell-gateway",
        dest="openshell_gateway",
        nargs="?",
        const=REFERENCE_TARGET,
        default=None,
        metavar="TARGET",
        help="enable the plugin against TARGET: the embedded reference gateway (default), "
        "'kubernetes' (the same gateway on the cluster of a kube context) or a "
        "gateway driver registered with the pytest_openshell_gateway_driver hook. Without it "
        "the plugin does nothing and its tests skip.",
    )
    parser.addini("openshell_gateway", "gateway target (see --openshell-gateway)", default=None)
    for option in OPTIONS:
        default_text = f" (default: {option.default})" if option.default else ""
        extra: dict[str, object] = (
            {"nargs": "?", "const": option.optional} if option.optional else {}
        )
        group.addoption(
            f"--openshell-{option.name}",
            dest=option.dest,
            default=None,
            metavar=option.metavar,
            help=option.help + default_text,
            **extra,
        )
        parser.addini(option.dest, option.help, default=option.default)


def _raw(config: pytest.Config, dest: str, env_name: str, env: Mapping[str, str]) -> object:
    value = config.getoption(dest)
    if value is not None:
        return value
    if env.get(env_name):
        return env[env_name]
    return config.getini(dest)


@dataclass(frozen=True)
class GatewayOptions:
    """How every gateway of a run is deployed: the one record carried from the options, through
    :class:`~pytest_openshell.drivers.GatewaySpec`, to the driver."""

    images: ImageSet = field(default_factory=ImageSet)
    faults: frozenset[Fault] = frozenset()
    health_timeout: float = 180.0
    api_timeout: float = 90.0
    #: the reference gateway's transport (``nssh1`` or ``supervisor``), chosen at its first deploy
    transport: str = DEFAULT_TRANSPORT
    #: seconds a sandbox token lives (None: the gateway's default, no expiry); a scenario whose
    #: traits say it outlives the tokens sets it (:meth:`Scenario.deploy_options`)
    sandbox_token_ttl: float | None = None


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run."""

    target: str | None
    engine: EngineMode
    images: ImageSet
    scenarios: str
    faults: frozenset[Fault]
    artifacts: Path
    keep: str
    build: bool
    health_timeout: float
    api_timeout: float
    recovery_timeout: float
    settle: float
    #: the transports asked for: every scenario runs once per transport (the first is the one of
    #: gateways deployed outside a scenario's or a transport's parameter)
    transports: tuple[str, ...] = (DEFAULT_TRANSPORT,)
    extra: dict[str, str] = field(default_factory=dict)
    #: --openshell-workload: client threads during each scenario (property 18)
    workload: bool = False
    #: --openshell-seed: the workload's choices (None: drawn per run)
    seed: int | None = None
    #: --openshell-strike: the moment the disruption waits for (None: drawn from the seed)
    strike: Moment | None = None
    kube_context: str | None = None
    kube_namespace: str | None = None
    kube_endpoint: str | None = None

    @property
    def enabled(self) -> bool:
        return self.target is not None

    @property
    def gateway_options(self) -> GatewayOptions:
        """What the run's gateways are deployed with (on its first transport)."""
        return self.options_for(self.transports[0])

    def scenario_id(self, key: str, transport: str | None = None) -> str:
        """The run's name for scenario ``key`` on ``transport`` (default: the first): the key
        alone when the run has one transport, else ``key-transport``
        (:func:`pytest_openshell.transports.scenario_id`)."""
        return scenario_id(key, transport or self.transports[0], self.transports)

    def options_for(self, transport: str) -> GatewayOptions:
        """What the run's gateways of ``transport`` are deployed with."""
        return GatewayOptions(
            self.images, self.faults, self.health_timeout, self.api_timeout, transport
        )


def _number(name: str, value: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise UsageError(f"--openshell-{name} takes a number of seconds, not {value!r}") from None
    if number <= 0:
        raise UsageError(f"--openshell-{name} must be positive, not {value!r}")
    return number


KEEP_CHOICES = ("never", "failed", "always")


def _keep(value: object) -> str:
    text = str(value).strip().lower()
    aliases = {"": "never", "no": "never", "false": "never", "yes": "failed", "true": "failed"}
    text = aliases.get(text, text)
    if text not in KEEP_CHOICES:
        raise UsageError(f"--openshell-keep takes never, failed or always, not {value!r}")
    return text


def _endpoint(value: object) -> str | None:
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--openshell-kube-endpoint takes HOST:PORT, not {value!r}")
    return str(value)


def _transports(value: object) -> tuple[str, ...]:
    """``nssh1``, ``supervisor`` or a comma list of them (each once, in the order given)."""
    names = tuple(dict.fromkeys(n.strip() for n in str(value or "").split(",") if n.strip()))
    unknown = [name for name in names if name not in TRANSPORTS]
    if unknown or not names:
        raise UsageError(
            f"--openshell-transport takes {' or '.join(TRANSPORTS)}, or a comma list of them, "
            f"not {str(value)!r}"
        )
    return names


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _seed(value: object) -> int | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--openshell-seed takes an integer, not {value!r}") from None


def resolve(config: pytest.Config, env: Mapping[str, str] | None = None) -> Settings:
    """Read every option from the command line, the environment and the ini file.

    :raises pytest.UsageError: naming the flag, when a value is invalid.
    """
    env = os.environ if env is None else env
    values = {option.name: _raw(config, option.dest, option.env, env) for option in OPTIONS}
    target = _raw(config, "openshell_gateway", "PYTEST_OPENSHELL_GATEWAY", env)
    try:
        settings = Settings(
            target=str(target) if target else None,
            engine=EngineMode.parse(str(values["engine"])),
            images=ImageSet(
                gateway=str(values["image"]),
                gateway_upgrade=str(values["upgrade-image"]),
                sandbox=str(values["sandbox-image"]),
            ),
            scenarios=str(values["scenarios"]),
            faults=parse_faults(str(values["faults"] or "")),
            artifacts=Path(str(values["artifacts"])),
            keep=_keep(values["keep"]),
            build=_truthy(values["build"]),
            health_timeout=_number("health-timeout", values["health-timeout"]),
            api_timeout=_number("api-timeout", values["api-timeout"]),
            recovery_timeout=_number("recovery-timeout", values["recovery-timeout"]),
            settle=_number("settle", values["settle"]) if str(values["settle"]) != "0" else 0.0,
            workload=_truthy(values["workload"]),
            seed=_seed(values["seed"]),
            strike=parse_moment(str(values["strike"] or "")),
            kube_context=str(values["kube-context"]) if values["kube-context"] else None,
            kube_namespace=str(values["kube-namespace"]) if values["kube-namespace"] else None,
            kube_endpoint=_endpoint(values["kube-endpoint"]),
            transports=_transports(values["transport"]),
        )
        if settings.target == KUBE_TARGET and settings.transports != (DEFAULT_TRANSPORT,):
            # Known before any driver is made: its manifests name no transport.
            raise UsageError(
                f"--openshell-transport={','.join(settings.transports)}: the kubernetes target "
                f"deploys {DEFAULT_TRANSPORT} gateways only (its manifests name no transport)",
                hint=f"run it with --openshell-transport={DEFAULT_TRANSPORT} (the default)",
            )
    except UsageError as exc:
        raise pytest.UsageError(f"openshell: {exc}") from exc
    return settings
