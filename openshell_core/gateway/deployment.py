"""Deploy a gateway: bring it back from whatever state Docker holds (stop and destroy are in
:mod:`.teardown`).

:func:`deploy` reads the state (:func:`~openshell_core.gateway.state.detect_state`) and follows
the command x state matrix of upstream's ``gateway start``:

==============  ===================================================  ===========================
state           ``deploy()``                                         ``deploy(recreate=True)``
==============  ===================================================  ===========================
NONE            fresh: network, volume, container                    fresh
RUNNING         nothing ("already running")                          wipe, then fresh
STOPPED         resume: the same container, no image is looked at    wipe, then fresh
                (with another ``port``: a new container, same volume)
VOLUME_ONLY     resume: a new container, from the requested image,   wipe, then fresh
                else the one that last ran on the volume
CONTAINER_ONLY  refused: a container without its volume              wipe, then fresh
==============  ===================================================  ===========================

A running gateway asked for another port is refused (it keeps its port). An image too old for
the store on the volume (its record, :mod:`openshell_core.state_record`) and a host port in use
are refused before anything is created. A failed resume removes the container and the network and
keeps the volume, and its hint names the command that resumes; a failed fresh deploy leaves
nothing behind. Lifecycle operations on one gateway are serialised by a lock file on this
machine, and a create that loses a race with another machine adopts the winner.
"""

from __future__ import annotations

import enum
import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from openshell_core.engine import Engine
from openshell_core.errors import (
    EngineError,
    NotFoundError,
    OpenShellError,
    ReadinessTimeout,
    StateError,
    UsageError,
)
from openshell_core.faults import Fault, active_faults
from openshell_core.gateway.names import (
    DEFAULT_GATEWAY_NAME,
    container_name,
    network_name,
    validate_name,
    volume_name,
)
from openshell_core.gateway.readiness import (
    DEFAULT_API_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    ApiProbe,
    ApiTarget,
    tls_probe,
    wait_api,
    wait_healthy,
)
from openshell_core.gateway.reconcile import (
    STATE_DIR,
    check_port_bindable,
    check_port_free,
    ensure_container,
    ensure_network,
    ensure_volume,
    gateway_container_spec,
    read_volume_record,
    reconcile_container_network,
)
from openshell_core.gateway.state import GatewayFacts, GatewayState, detect_state
from openshell_core.gateway.teardown import (
    remove_container_if_ours,
    remove_gateway_objects,
    remove_network_if_unused,
    remove_volume_if_ours,
)
from openshell_core.host.metadata import (
    GatewayMetadata,
    MetadataError,
    MtlsFiles,
    gateway_dir,
    gateway_lock,
    read_metadata,
    remove_gateway_files,
    write_metadata,
    write_mtls,
)
from openshell_core.images import ImageSet
from openshell_core.state_record import StateRecord, image_store_schema
from openshell_core.wire.contract import DEFAULT_TRANSPORT, RUN_ID_ENV, TRANSPORTS

log = logging.getLogger("openshell.gateway")

DEFAULT_PORT = 8080
#: Container states in which a container holds its published port.
_HOLDING = frozenset({"running", "restarting", "paused"})
#: Files the host-side client needs, from the gateway's PKI on its volume, by their host name.
_CLIENT_PKI = {"ca.crt": "ca.crt", "client.crt": "tls.crt", "client.key": "tls.key"}


class DeployMode(enum.Enum):
    FRESH = "fresh"
    RESUME = "resume"
    RECREATE = "recreate"
    ALREADY_RUNNING = "already-running"


@dataclass(frozen=True)
class DeployOptions:
    """What to deploy.

    :param port: the host port; None means the port recorded in the gateway's metadata, else
        :data:`DEFAULT_PORT`. A reused (stopped) container keeps the port it was created with.
    :param gateway_host: the host users reach the gateway by (a certificate SAN and the endpoint's
        host); None means the one recorded in the metadata, else ``127.0.0.1``.
    :param recreate: wipe container, volume and network first (all state is lost).
    :param faults: fault switches (testing aid), also passed to the gateway container.
    """

    name: str = DEFAULT_GATEWAY_NAME
    #: the gateway image; None means the gateway's own: the stopped container's, else the one
    #: that last ran on the volume (recorded there), else ``ImageSet().gateway``
    image: str | None = None
    port: int | None = None
    gateway_host: str | None = None
    recreate: bool = False
    sandbox_image: str = field(default_factory=lambda: ImageSet().sandbox)
    #: labels every object with this test run's id (default ``$OPENSHELL_RUN_ID``), so that the
    #: run, or the sweep after a crashed one, finds and removes them
    run_id: str | None = field(default_factory=lambda: os.environ.get(RUN_ID_ENV) or None)
    faults: frozenset[Fault] = field(default_factory=active_faults)
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    api_timeout: float = DEFAULT_API_TIMEOUT
    #: how the gateway reaches its sandboxes (``nssh1`` or ``supervisor``): chosen at the first
    #: deploy and kept on the volume; None keeps the recorded one (the default on a new gateway)
    transport: str | None = None
    #: seconds a sandbox token lives (``supervisor`` transport); None: the gateway's default, 0
    sandbox_token_ttl: float | None = None
    #: seconds an SSH session token lives; None: the gateway's default (a day)
    ssh_session_ttl: float | None = None
    #: where host-side files live (``XDG_CONFIG_HOME``); None means this process's environment.
    #: Test runs pass their own, so they never touch the user's ``~/.config/openshell``.
    config_env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class DeployOutcome:
    """What :func:`deploy` did. ``timings`` holds seconds for ``total``, ``health`` and ``api``."""

    name: str
    mode: DeployMode
    state_before: GatewayState
    container_id: str
    image: str
    port: int
    metadata: GatewayMetadata
    mtls: MtlsFiles
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.metadata.gateway_endpoint


# -- deploy -----------------------------------------------------------------------------------


def deploy(
    engine: Engine, options: DeployOptions | None = None, *, probe: ApiProbe = tls_probe
) -> DeployOutcome:
    """Bring gateway ``options.name`` up from whatever state Docker holds; see the module doc.

    Nothing is ever pulled. The host-side metadata and mTLS files are written once the gateway
    answers; ``active_gateway`` is the caller's business.

    :param probe: checks the API once (raises ``OSError`` while it is not ready); the default
        completes a TLS handshake with the client certificate.
    :raises UsageError: an invalid name or port (before Docker is touched).
    :raises StateError: an object with our names that is not ours, a container without its
        volume, a port held by another container or process, a running gateway asked for
        another port, an image too old for the store on the volume, unusable metadata (nothing
        is changed).
    :raises ImageNotFoundError: the image is not on the engine (nothing is created).
    :raises ReadinessTimeout: the gateway did not become ready (cleaned up as described).
    """
    options = options or DeployOptions()
    name = validate_name(options.name)
    if options.port is not None and not 1 <= options.port <= 65535:
        raise UsageError(f"port {options.port} is not a TCP port (1-65535)")
    if options.transport is not None and options.transport not in TRANSPORTS:
        raise UsageError(
            f"unknown transport {options.transport!r}",
            hint=f"use one of {', '.join(TRANSPORTS)}",
        )
    started = time.monotonic()
    env = options.config_env
    with gateway_lock(name, env):
        log.info("Checking gateway %s", name)
        facts = detect_state(engine, name)
        facts.refuse_foreign("start")
        if not options.recreate and facts.state is GatewayState.RUNNING:
            _refuse_transport_change(name, facts.transport, options.transport)
            _refuse_port_change(facts, options.port)
            return _already_running(engine, facts, options, started)
        metadata = None if options.recreate else read_metadata(name, env)
        if not options.recreate and facts.state is GatewayState.CONTAINER_ONLY:
            raise StateError(
                f"gateway {name!r} has a container but no volume {volume_name(name)!r}: its "
                "state is not where it belongs, and an empty volume will not be created under it",
                hint=f"inspect it (`docker inspect {container_name(name)}`), then start over "
                "with `gateway start --recreate` or `gateway destroy`",
            )
        plan = _plan(engine, options, facts, metadata)
        if options.recreate and facts.state is not GatewayState.NONE:
            log.info("Removing existing gateway")
            remove_gateway_objects(engine, name)
        had_files = gateway_dir(name, env).exists()
        try:
            return _bring_up(engine, options, facts, plan, probe=probe, started=started)
        except BaseException as exc:
            if plan.mode is DeployMode.RESUME:
                kept = _cleanup_failed_resume(engine, name, options.faults)
                after = (
                    f"the container was removed and the volume {volume_name(name)!r} kept: "
                    f"{_resume_command(engine, name, plan, options)} resumes from it once the "
                    "cause is fixed"
                    if kept
                    else "the container was removed"
                )
            else:
                _cleanup_failed_fresh(engine, name, remove_files=not had_files, env=env)
                after = "everything this deploy created was removed"
            if isinstance(exc, ReadinessTimeout):
                exc.hint = after  # its log is in the message; the container it named is gone
            elif isinstance(exc, OpenShellError):
                exc.hint = f"{exc.hint}; {after}" if exc.hint else after
            raise


@dataclass(frozen=True)
class _Plan:
    mode: DeployMode
    #: reuse the existing (stopped) container as it is
    reuse: bool
    image: str
    port: int
    gateway_host: str | None
    #: what the volume recorded about the image that last ran on it (None: not read, or none)
    record: StateRecord | None = None
    transport: str = DEFAULT_TRANSPORT


def _plan(
    engine: Engine,
    options: DeployOptions,
    facts: GatewayFacts,
    metadata: GatewayMetadata | None,
) -> _Plan:
    """Decide mode, image, port and host, and check what can be checked before any change: the
    image is on the engine and opens the store on the volume, the port is free."""
    name = options.name
    if options.recreate:
        mode = DeployMode.RECREATE
    elif facts.state in (GatewayState.STOPPED, GatewayState.VOLUME_ONLY):
        mode = DeployMode.RESUME
        log.info("Resuming gateway from existing state")
    else:
        mode = DeployMode.FRESH
        log.info("Deploying a new gateway")
    # A stopped container is started as it is, unless the user asked for another port: a
    # published port is fixed at create, so that takes a new container on the same volume.
    moved = (
        facts.state is GatewayState.STOPPED
        and options.port is not None
        and facts.host_port is not None
        and options.port != facts.host_port
    )
    reuse = mode is DeployMode.RESUME and facts.state is GatewayState.STOPPED and not moved
    record: StateRecord | None = None
    transport = options.transport or DEFAULT_TRANSPORT
    if mode is DeployMode.RESUME and facts.container_exists:
        # the container was made with the volume's transport
        transport = _refuse_transport_change(name, facts.transport, options.transport)
    if reuse:
        image = facts.image or options.image or ImageSet().gateway  # the container's own
        port = facts.host_port or _wanted_port(options, metadata)
    elif mode is DeployMode.RESUME:
        readers = [options.image, facts.image, ImageSet().gateway]
        record = read_volume_record(engine, name, readers, options.run_id)
        if record is not None:
            transport = _refuse_transport_change(
                name, record.transport or DEFAULT_TRANSPORT, options.transport
            )
        image = _resume_image(options, facts, record)
        engine.require_image(image)
        _check_store_schema(engine, name, image, record)
        port = _wanted_port(options, metadata)
        if moved:
            log.info(
                "Moving gateway %s from port %s to %d: a new container on the same volume",
                name,
                facts.host_port,
                port,
            )
    else:
        image = options.image or ImageSet().gateway
        engine.require_image(image)
        port = _wanted_port(options, metadata)
    gateway_host = options.gateway_host or (metadata.gateway_host() if metadata else None)
    check_port_free(engine, port, own_container=container_name(name))
    if not (facts.host_port == port and facts.container_status in _HOLDING):
        check_port_bindable(engine, name, port)  # (our own container holds it: --recreate)
    return _Plan(mode, reuse, image, port, gateway_host, record, transport)


def _refuse_transport_change(name: str, kept: str | None, asked: str | None) -> str:
    """The gateway's transport, which a later deploy cannot change.

    :raises StateError: ``asked`` is another transport than the gateway's (nothing is changed).
    """
    kept = kept or DEFAULT_TRANSPORT
    if asked is None or asked == kept:
        return kept
    raise StateError(
        f"gateway {name!r} speaks transport {kept!r}, chosen when it was first deployed and "
        f"kept on its volume; --transport {asked} was not applied and nothing was changed",
        hint=f"start it without --transport (or with --transport {kept}); a {asked} gateway "
        f"needs another name (`pytest-openshell gateway start --name NAME --transport {asked}`) "
        f"or `pytest-openshell gateway start --name {name} --recreate --transport {asked}`, "
        "which loses every sandbox of this one",
    )


def _resume_image(options: DeployOptions, facts: GatewayFacts, record: StateRecord | None) -> str:
    """The image of a new container on an existing volume: the user's, else the one that last
    ran on the volume (its record), else the stopped container's, else the default."""
    if options.image:
        return options.image
    if record is not None and record.image:
        log.info("Using %s, the image that last ran on the volume", record.image)
        return record.image
    return facts.image or ImageSet().gateway


def _check_store_schema(engine: Engine, name: str, image: str, record: StateRecord | None) -> None:
    """Refuse, before a container is made, an image that cannot open the store on the volume
    (it would refuse it at every start: a restart loop)."""
    if record is None:
        return
    opens = image_store_schema((engine.inspect_image(image) or {}).get("Config", {}).get("Labels"))
    if opens is None or opens >= record.store_schema:
        return
    writer = f", last opened by {record.image}" if record.image else ""
    if record.image and record.image != image:
        fix = (
            f"resume with the image that last ran on it: `pytest-openshell gateway start --name "
            f"{name} --image {record.image}` (or without --image, which uses it)"
        )
    else:
        fix = (
            f"resume with an image that opens store schema version {record.store_schema}: "
            f"`pytest-openshell gateway start --name {name} --image IMAGE`"
        )
    raise StateError(
        f"cannot resume gateway {name!r} on image {image!r}: the store on volume "
        f"{volume_name(name)!r} is at schema version {record.store_schema}{writer}, and "
        f"{image} opens at most version {opens}; nothing was created",
        hint=f"{fix}; downgrades are not supported",
    )


def _resume_command(engine: Engine, name: str, plan: _Plan, options: DeployOptions) -> str:
    """The command that resumes after a failed resume: on the image that last opened the store
    (the volume's record, read again: this attempt may have upgraded it), else this attempt's."""
    try:
        record = read_volume_record(engine, name, [plan.image], options.run_id)
    except OpenShellError:
        record = plan.record
    image = record.image if record is not None and record.image else plan.image
    command = f"`pytest-openshell gateway start --name {name} --image {image}"
    if options.port is not None:
        command += f" --port {plan.port}"
    return command + "`"


def _wanted_port(options: DeployOptions, metadata: GatewayMetadata | None) -> int:
    if options.port is not None:
        return options.port
    if metadata is not None and metadata.gateway_port > 0:
        return metadata.gateway_port
    return DEFAULT_PORT


def _bring_up(
    engine: Engine,
    options: DeployOptions,
    facts: GatewayFacts,
    plan: _Plan,
    *,
    probe: ApiProbe,
    started: float,
) -> DeployOutcome:
    name = options.name
    container = container_name(name)
    mode, image, port = plan.mode, plan.image, plan.port
    if mode is DeployMode.RESUME and Fault.PULL_ON_RESUME in options.faults:
        log.info("Downloading gateway")
        _simulated_pull(image)
    log.info("Initializing environment")
    ensure_network(engine, name, run_id=options.run_id)
    ensure_volume(engine, name, run_id=options.run_id)
    if plan.reuse:
        container_id = str(facts.container_id)
        if Fault.NO_NETWORK_RECONCILE not in options.faults:
            reconcile_container_network(engine, container, network_name(name))
    else:
        if facts.state is GatewayState.STOPPED and not options.recreate:
            # moving to another port: the stopped container goes, its volume stays
            remove_container_if_ours(engine, container)
        spec = gateway_container_spec(
            engine,
            name=name,
            image=image,
            port=port,
            sandbox_image=options.sandbox_image,
            gateway_host=plan.gateway_host,
            run_id=options.run_id,
            faults=options.faults,
            transport=plan.transport,
            sandbox_token_ttl=options.sandbox_token_ttl,
            ssh_session_ttl=options.ssh_session_ttl,
        )
        container_id, _ = ensure_container(engine, spec)
    log.info("Starting gateway")
    engine.start_container(container)
    log.info("Waiting for the gateway's health check")
    answered: list[MtlsFiles] = []

    def answers() -> bool:
        mtls = _answers(engine, name, port, probe, options.config_env)
        if mtls is not None:
            answered.append(mtls)
        return mtls is not None

    health = wait_healthy(engine, container, timeout=options.health_timeout, answers=answers)
    if answered:  # the API answered already: that is what the next wait would wait for
        mtls, api = answered[-1], 0.0
    else:
        mtls = fetch_mtls(engine, name, options.config_env)
        log.info("Waiting for the gateway API on 127.0.0.1:%d", port)
        target = ApiTarget("127.0.0.1", port, mtls.ca_cert, mtls.cert, mtls.key)
        api = wait_api(engine, container, target, probe, timeout=options.api_timeout)
    metadata = GatewayMetadata.local(name, port, plan.gateway_host)
    write_metadata(metadata, options.config_env)
    total = time.monotonic() - started
    log.info("Gateway %s ready (%s) in %.1f s", name, mode.value, total)
    return DeployOutcome(
        name=name,
        mode=mode,
        state_before=facts.state,
        container_id=container_id,
        image=image,
        port=port,
        metadata=metadata,
        mtls=mtls,
        timings={"total": total, "health": health, "api": api},
    )


def _answers(
    engine: Engine, name: str, port: int, probe: ApiProbe, env: Mapping[str, str] | None
) -> MtlsFiles | None:
    """The client files, when the gateway's API already answers with them (the same thing its
    health check reports, seen before Docker's next probe); None while it does not.

    The host's own files are tried first: on a resume they are usually the gateway's, and
    copying the three files out of the container costs more than a probe. They are fetched when
    missing, or when the gateway listens but does not take them (its PKI is new)."""
    mtls = MtlsFiles.of(name, env)
    if mtls.exist():
        try:
            probe(ApiTarget("127.0.0.1", port, mtls.ca_cert, mtls.cert, mtls.key))
        except (ConnectionError, TimeoutError, ssl.SSLEOFError):
            # Nothing listens yet: the files are not the question. Docker's port proxy takes the
            # connection and drops it while the container starts, which ends the handshake
            # with an EOF; fetching the files then would cost each probe an engine call.
            return None
        except OSError:
            pass
        else:
            return mtls
    try:
        mtls = fetch_mtls(engine, name, env)
        probe(ApiTarget("127.0.0.1", port, mtls.ca_cert, mtls.cert, mtls.key))
    except (OSError, OpenShellError):
        return None
    return mtls


def _refuse_port_change(facts: GatewayFacts, port: int | None) -> None:
    """A running gateway keeps its port: a request for another one is refused, not ignored."""
    if port is None or facts.host_port is None or port == facts.host_port:
        return
    name = facts.name
    raise StateError(
        f"gateway {name!r} is already running on port {facts.host_port}; it was left as it is "
        f"and --port {port} was not applied",
        hint=f"to move it to port {port} (its state and sandboxes are kept): `pytest-openshell "
        f"gateway stop --name {name}`, then `pytest-openshell gateway start --name {name} "
        f"--port {port}`; or leave out --port",
    )


def _already_running(
    engine: Engine, facts: GatewayFacts, options: DeployOptions, started: float
) -> DeployOutcome:
    """RUNNING: no Docker change at all. Host-side files that are missing are restored from the
    running gateway (read-only), so that a deleted metadata directory does not strand it; a
    corrupt metadata file is reported and left for a person to look at."""
    name, env = facts.name, options.config_env
    log.info("Gateway is already running")
    try:
        metadata = read_metadata(name, env)
        restore = metadata is None
    except MetadataError as exc:
        log.warning("%s", exc)
        metadata, restore = None, False
    port = facts.host_port or _wanted_port(options, metadata)
    mtls = MtlsFiles.of(name, env)
    if not mtls.exist():
        try:
            mtls = fetch_mtls(engine, name, env)
        except NotFoundError as exc:
            log.warning("could not restore the mTLS files of gateway %s: %s", name, exc)
    if metadata is None:
        metadata = GatewayMetadata.local(name, port, options.gateway_host)
        if restore:
            write_metadata(metadata, env)
    return DeployOutcome(
        name=name,
        mode=DeployMode.ALREADY_RUNNING,
        state_before=facts.state,
        container_id=str(facts.container_id),
        image=facts.image or "",
        port=port,
        metadata=metadata,
        mtls=mtls,
        timings={"total": time.monotonic() - started},
    )


def fetch_mtls(engine: Engine, name: str, env: Mapping[str, str] | None = None) -> MtlsFiles:
    """Copy the client's PKI files out of the gateway container into the host ``mtls/`` dir."""
    container = container_name(name)
    pki = engine.read_container_files(container, f"{STATE_DIR}/pki")
    missing = [inside for inside in _CLIENT_PKI if inside not in pki]
    if missing:
        raise NotFoundError("file", f"{container}:{STATE_DIR}/pki/{missing[0]}")
    found = {host: pki[inside] for inside, host in _CLIENT_PKI.items()}
    return write_mtls(
        name, ca_cert=found["ca.crt"], cert=found["tls.crt"], key=found["tls.key"], env=env
    )


def _simulated_pull(image: str) -> None:
    """The fault ``pull-on-resume``: fail as a registry does for a local-only tag. Nothing is
    contacted; this project never pulls."""
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    raise EngineError(
        f"pull {image} failed: pull access denied for {repository}, repository does not exist "
        "or may require 'docker login' (simulated by the fault pull-on-resume; no registry was "
        "contacted)"
    )


# -- failure cleanup --------------------------------------------------------------------------


def _cleanup_failed_resume(engine: Engine, name: str, faults: frozenset[Fault]) -> bool:
    """A failed resume: container and network go, the volume stays (the state is on it).

    Returns whether the volume was kept (always, unless the fault
    ``wipe-volume-on-resume-failure`` re-creates upstream's old fallback).
    """
    wipe = Fault.WIPE_VOLUME_ON_RESUME_FAILURE in faults
    log.info(
        "resume failed, cleaning up container for '%s'%s",
        name,
        "" if wipe else " (preserving volume)",
    )
    try:
        remove_container_if_ours(engine, container_name(name))
        remove_network_if_unused(engine, network_name(name))
        if wipe:
            remove_volume_if_ours(engine, volume_name(name))
    except OpenShellError as exc:
        _cleanup_warning(name, exc)
    return not wipe


def _cleanup_failed_fresh(
    engine: Engine, name: str, *, remove_files: bool, env: Mapping[str, str] | None
) -> None:
    """A failed fresh deploy: everything it made goes."""
    log.info("deploy failed, removing what it created for '%s'", name)
    try:
        remove_container_if_ours(engine, container_name(name))
        remove_network_if_unused(engine, network_name(name))
        remove_volume_if_ours(engine, volume_name(name))
        if remove_files:
            remove_gateway_files(name, env)
    except (OpenShellError, OSError) as exc:
        _cleanup_warning(name, exc)


def _cleanup_warning(name: str, exc: Exception) -> None:
    log.warning(
        "cleanup after the failure did not finish (%s). Manual cleanup may be required: "
        "pytest-openshell gateway destroy --name %s",
        exc,
        name,
    )
