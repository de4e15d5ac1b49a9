"""Waiting for a gateway: first Docker's health check, then its API.

Docker probes health once per interval, so its verdict lags the gateway by up to a second: the
health wait ends early as soon as the API itself answers over mTLS (what the health check checks),
and an unhealthy verdict still fails.

Both waits poll with backoff, give up at their own deadline, and fail fast when waiting cannot
help any more: the container exited, vanished or restarts in a loop. Every failure is a
:class:`~openshell_core.errors.ReadinessTimeout` carrying the last lines of the container's log.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

from openshell_core.engine import Engine
from openshell_core.errors import ReadinessTimeout
from openshell_core.retry import GiveUp, poll_until

log = logging.getLogger("openshell.gateway")

#: Upstream waits about 6 minutes for health and 90 s for the API.
DEFAULT_HEALTH_TIMEOUT = 180.0
DEFAULT_API_TIMEOUT = 90.0
#: A container restarted this many times while we wait is crash-looping.
MAX_RESTARTS = 3
LOG_TAIL = 15


@dataclass(frozen=True)
class ApiTarget:
    """Where and how a client reaches a gateway's API: address and mTLS files."""

    host: str
    port: int
    ca_cert: Path
    client_cert: Path
    client_key: Path


#: Raises (any ``OSError``, including ``ssl.SSLError``) while the API is not ready.
ApiProbe = Callable[[ApiTarget], None]


def tls_probe(target: ApiTarget, *, timeout: float = 5.0) -> None:
    """Complete a TLS handshake with client certificate, checking the server against the CA.

    The server certificate must name ``target.host`` (an IP SAN for ``127.0.0.1``). The probe
    speaks TLS 1.2, where the server's verdict on the client certificate is part of the
    handshake: under TLS 1.3 a refusal arrives only after it, and seeing that would mean waiting
    on every probe.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(target.ca_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(target.client_cert), str(target.client_key))
    with (
        socket.create_connection((target.host, target.port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=target.host),
    ):
        pass


#: A gateway that resumes answers about 0.3 s after its container starts: polls stay close
#: together for the first second, where that moment falls (a factor of 1.25 put the polls around
#: it 0.14 s apart, each a tenth of a second a recovery was seen late), then space out to every
#: half second (an inspect or a TLS handshake costs little).
_READINESS_BACKOFF: Final = (0.05, 1.15, 0.5)


def wait_healthy(
    engine: Engine,
    container: str,
    *,
    timeout: float = DEFAULT_HEALTH_TIMEOUT,
    what: str = "gateway health check",
    answers: Callable[[], bool] | None = None,
) -> float:
    """Wait until Docker reports ``container`` healthy; returns the seconds waited.

    :param answers: says whether the service already answers for itself; when it does, the wait
        ends before Docker's next health probe (Docker probes only once per interval, so its
        verdict lags the service by up to that long). An unhealthy verdict still fails.
    :raises ReadinessTimeout: at the deadline, or at once when the container has no health check,
        exited, vanished, or restarted :data:`MAX_RESTARTS` times.
    """
    started = time.monotonic()
    down = _DownCheck(container)

    def observe() -> str:
        doc = down.inspect(engine)
        health = (doc.get("State") or {}).get("Health")
        if not health:
            raise GiveUp("the container has no health check (its image lacks a HEALTHCHECK)")
        status = str(health.get("Status") or "starting")
        if status == "starting" and answers is not None and answers():
            return "answers"
        return status

    poll_until(
        observe,
        lambda status: status in ("healthy", "answers"),
        timeout=timeout,
        what=f"{what} of {container}",
        describe=lambda status: f"health status: {status}",
        schedule=_READINESS_BACKOFF,
        **_failure_details(engine, container),
    )
    return time.monotonic() - started


def wait_api(
    engine: Engine,
    container: str,
    target: ApiTarget,
    probe: ApiProbe,
    *,
    timeout: float = DEFAULT_API_TIMEOUT,
    what: str = "gateway API",
) -> float:
    """Probe the API until it answers; returns the seconds waited.

    :raises ReadinessTimeout: at the deadline (with the probe's last error), or at once when the
        container stops running.
    """
    started = time.monotonic()
    down = _DownCheck(container)

    def observe() -> str | None:
        try:
            probe(target)
        except OSError as exc:
            down.inspect(engine)  # the probe failed: is the container still worth waiting for?
            where = f"{target.host}:{target.port}"
            return f"not accepting connections on {where} ({type(exc).__name__}: {exc})"
        return None

    poll_until(
        observe,
        lambda refused: refused is None,
        timeout=timeout,
        what=f"{what} of {container}",
        describe=str,
        schedule=_READINESS_BACKOFF,
        **_failure_details(engine, container),
    )
    return time.monotonic() - started


class _FailureDetails(TypedDict):
    last_logs: Callable[[], list[str]]
    hint: str


def _failure_details(engine: Engine, container: str) -> _FailureDetails:
    return {
        "last_logs": lambda: engine.container_logs(container, tail=LOG_TAIL),
        "hint": f"the container's full log: `docker logs {container}`",
    }


@dataclass
class _DownCheck:
    """Inspects the container and gives up when waiting cannot help: it vanished, exited, or
    restarted :data:`MAX_RESTARTS` times since the first look."""

    container: str
    baseline: int | None = None

    def inspect(self, engine: Engine) -> dict[str, Any]:
        doc = engine.inspect_container(self.container)
        if doc is None:
            raise GiveUp("the container disappeared")
        restarts = int(doc.get("RestartCount") or 0)
        self.baseline = restarts if self.baseline is None else self.baseline
        state = doc.get("State") or {}
        if not state.get("Running") and not state.get("Restarting"):
            code = state.get("ExitCode")
            detail = f", error: {state['Error']}" if state.get("Error") else ""
            raise GiveUp(f"the container exited unexpectedly (exit code {code}{detail})")
        if restarts - self.baseline >= MAX_RESTARTS:
            raise GiveUp(
                f"the container is restarting in a loop ({restarts - self.baseline} restarts "
                "while waiting)"
            )
        return doc


#: Seconds ``gateway start`` waits for sandboxes the gateway is bringing back (a sandbox whose
#: container restarts is READY again within a few seconds).
SANDBOX_RETURN_TIMEOUT = 60.0


@dataclass(frozen=True)
class SandboxesBack:
    """What :func:`wait_sandboxes_back` saw: the sandboxes that came back while it waited, and
    those still coming back at its deadline."""

    back: tuple[str, ...]
    pending: tuple[str, ...]


def wait_sandboxes_back(
    coming_back: Callable[[], set[str]], *, timeout: float = SANDBOX_RETURN_TIMEOUT
) -> SandboxesBack:
    """Wait until no sandbox is coming back any more, or ``timeout`` passed.

    :param coming_back: the names of the sandboxes on their way back now (see
        ``cli._gateway``: ``PROVISIONING``, or reported ``READY`` by a gateway that has not yet
        seen their container stopped).

    A gateway that resumes after its sandboxes' containers were stopped answers at once, but
    restarts those containers itself, and each is on its way for a few seconds: a user told
    "ready" then would find them refused. A sandbox in ``ERROR`` is not waited for: the wait is
    for those on their way, not for those that cannot come.
    """
    first = coming_back()
    if not first:
        return SandboxesBack(back=(), pending=())
    log.info("Waiting for %d sandbox(es) to come back: %s", len(first), ", ".join(sorted(first)))
    try:
        pending = poll_until(
            coming_back,
            lambda names: not names,
            timeout=timeout,
            what="sandboxes coming back",
            describe=lambda names: ", ".join(sorted(names)),
            schedule=_READINESS_BACKOFF,
        )
    except ReadinessTimeout:
        pending = coming_back()  # at the deadline: those not back are reported, not fatal
    return SandboxesBack(tuple(sorted(first - pending)), tuple(sorted(pending)))
