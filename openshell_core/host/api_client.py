"""The host-side client of a gateway: gRPC over mutual TLS with the files the deploy wrote.

A gateway named ``NAME`` is described by the host-side files of
:mod:`openshell_core.host.metadata`: ``metadata.json`` (``gateway_endpoint``, e.g.
``https://127.0.0.1:8080``) and ``mtls/{ca.crt,tls.crt,tls.key}``. gRPC failures become
:mod:`openshell_core.errors` families in one place, :func:`_translate`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlparse

import grpc

from openshell_core.errors import (
    NotFoundError,
    OpenShellError,
    StateError,
    UsageError,
)
from openshell_core.grpc_api import (
    DEFAULT_WORKSPACE,
    HINT_METADATA,
    HOST_PUBLIC_KEY_ANNOTATION,
    pb,
    phase_name,
    stub,
    workspace_selector,
)
from openshell_core.host.metadata import MtlsFiles, read_active_gateway, read_metadata
from openshell_core.retry import GiveUp, poll_until
from openshell_core.wire import contract

DEFAULT_TIMEOUT: Final = 30.0


class GatewayRpcError(OpenShellError):
    """The gateway answered a call with an error, or could not be reached.

    :param code: the gRPC status code name (``UNAVAILABLE``, ``INTERNAL``, ...).
    """

    def __init__(self, message: str, *, code: str, hint: str | None = None) -> None:
        self.code = code
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the gateway reports it. ``phase`` is ``READY``, ``PROVISIONING``, ..."""

    id: str
    name: str
    workspace: str
    phase: str
    reason: str = ""
    image: str = ""
    host_key_fingerprint: str = ""
    #: The sandbox's SSH host public key line (what ``known_hosts`` needs).
    host_public_key: str = ""
    restart_count: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The environment its create asked for (what the store must keep).
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Its supervisor session (None: the gateway reports none, as an ``nssh1`` gateway)
    supervisor_session: SupervisorSession | None = None


@dataclass(frozen=True)
class SupervisorSession:
    """The sandbox's supervisor session as a ``supervisor`` gateway reports it (the condition
    :data:`~openshell_core.wire.contract.SUPERVISOR_SESSION_CONDITION`)."""

    live: bool
    #: ``Connected``, ``Disconnected`` or ``RefusedAsDuplicate``
    reason: str
    message: str

    @property
    def identity(self) -> tuple[str, str, int] | None:
        """(session id, instance id, epoch) of the latest session; None when the message names
        none (no session yet, or a refusal)."""
        found = _SESSION_MESSAGE.fullmatch(self.message)
        if found is None:
            return None
        return found["session"], found["instance"], int(found["epoch"])

    @property
    def refused(self) -> bool:
        return self.reason == contract.SUPERVISOR_SESSION_REFUSED


_SESSION_MESSAGE: Final = re.compile(
    contract.SUPERVISOR_SESSION_MESSAGE.format(
        session=r"(?P<session>\S+)", instance=r"(?P<instance>\S+)", epoch=r"(?P<epoch>\d+)"
    )
)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class SshSession:
    """A token for ``CONNECT /connect/ssh``, and where to use it."""

    token: str = field(repr=False)  # a credential: kept out of reprs in reports
    sandbox_id: str
    gateway_host: str
    gateway_port: int
    host_key_fingerprint: str
    expires_at: float


def active_gateway() -> str:
    """The gateway commands use when none is named: ``$OPENSHELL_GATEWAY``, else the
    ``active_gateway`` file (as the SDK decides)."""
    named = os.environ.get("OPENSHELL_GATEWAY", "").strip() or read_active_gateway()
    if not named:
        raise UsageError(
            "no active gateway",
            hint="start one with `pytest-openshell gateway start`, or pass --gateway NAME",
        )
    return named


def _target(endpoint: str) -> str:
    """``https://127.0.0.1:8080`` -> ``127.0.0.1:8080`` (gRPC's target form)."""
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 443
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_STATUS_FAMILIES: Final[Mapping[grpc.StatusCode, type[OpenShellError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: UsageError,
    grpc.StatusCode.ALREADY_EXISTS: UsageError,
    grpc.StatusCode.FAILED_PRECONDITION: StateError,
}


def _hint_of(exc: grpc.RpcError) -> str | None:
    """The hint the gateway sent with an error (trailing metadata ``openshell-hint-bin``)."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == HINT_METADATA:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text or None
    return None


def _translate(exc: grpc.RpcError, what: str, *, target: str = "") -> OpenShellError:
    """The one place where gRPC failures become our error families."""
    code_of = getattr(exc, "code", None)
    details_of = getattr(exc, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or str(exc)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    hint = _hint_of(exc)
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(
            "sandbox", target or what, hint=hint or "`sandbox list` shows what exists"
        )
    family = _STATUS_FAMILIES.get(code)
    if family is not None:
        return family(f"{what}: {details}", hint=hint)
    if code is grpc.StatusCode.UNAVAILABLE and hint is None:
        hint = "is the gateway running? `pytest-openshell gateway status` tells"
    return GatewayRpcError(f"{what} failed ({code.name}): {details}", code=code.name, hint=hint)


class GatewayClient:
    """Calls on one gateway. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        endpoint: str,
        *,
        ca: bytes,
        cert: bytes | None,
        key: bytes | None,
        workspace: str = DEFAULT_WORKSPACE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self.endpoint = endpoint
        self.workspace = workspace
        self._timeout = timeout
        self._channel = grpc.secure_channel(_target(endpoint), credentials)
        self._stub = stub(self._channel)

    @classmethod
    def for_gateway(
        cls, name: str | None = None, *, env: Mapping[str, str] | None = None, **options: Any
    ) -> GatewayClient:
        """A client for the gateway ``name`` (default: the active one) from its host files.

        :param env: where the host files live (``XDG_CONFIG_HOME``); default this process's.
        """
        name = name or active_gateway()
        metadata = read_metadata(name, env)
        if metadata is None:
            raise NotFoundError(
                "gateway", name, hint="start it with `pytest-openshell gateway start`"
            )
        files = MtlsFiles.of(name, env)
        try:
            ca, cert, key = (
                files.ca_cert.read_bytes(),
                files.cert.read_bytes(),
                files.key.read_bytes(),
            )
        except FileNotFoundError as exc:
            raise StateError(
                f"mTLS file {exc.filename} of gateway {name!r} is missing",
                hint="`pytest-openshell gateway start` writes it again",
            ) from None
        return cls(metadata.gateway_endpoint, ca=ca, cert=cert, key=key, **options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _calling(self, what: str, target: str = "") -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise _translate(exc, what, target=target) from exc

    def _scope(self) -> Any:
        return workspace_selector(self.workspace)

    # -- gateway --

    def health(self) -> str:
        """The gateway's version when it reports healthy."""
        with self._calling("health check"):
            reply = self._stub.Health(pb.HealthRequest(), timeout=self._timeout)
        if reply.status != pb.SERVICE_STATUS_HEALTHY:
            raise GatewayRpcError(
                f"gateway reports {pb.ServiceStatus.Name(reply.status)}", code="OK"
            )
        return str(reply.version)

    # -- sandboxes --

    def create_sandbox(
        self,
        name: str | None = None,
        *,
        environment: Mapping[str, str] | None = None,
        image: str | None = None,
        labels: Mapping[str, str] | None = None,
        command: Sequence[str] = (),
    ) -> SandboxInfo:
        """:param command: the sandbox's own command, which its gateway runs at every start of
        the sandbox (``spec.command``)."""
        spec = pb.SandboxSpec(environment=dict(environment or {}), command=list(command))
        if image:
            spec.template.image = image
        request = pb.CreateSandboxRequest(
            workspace_scope=self._scope(), spec=spec, name=name or "", labels=dict(labels or {})
        )
        with self._calling("create sandbox", name or ""):
            reply = self._stub.CreateSandbox(request, timeout=self._timeout)
        return _info(reply.sandbox)

    def get_sandbox(self, name: str) -> SandboxInfo:
        request = pb.GetSandboxRequest(workspace_scope=self._scope(), name=name)
        with self._calling("get sandbox", name):
            reply = self._stub.GetSandbox(request, timeout=self._timeout)
        return _info(reply.sandbox)

    def list_sandboxes(self, *, all_workspaces: bool = False) -> list[SandboxInfo]:
        scope = workspace_selector(None if all_workspaces else self.workspace)
        found: list[SandboxInfo] = []
        token = ""
        while True:
            request = pb.ListSandboxesRequest(workspace_scope=scope, page_token=token)
            with self._calling("list sandboxes"):
                reply = self._stub.ListSandboxes(request, timeout=self._timeout)
            found.extend(_info(item) for item in reply.sandboxes)
            token = str(reply.next_page_token)
            if not token:
                return found

    def delete_sandbox(self, name: str, *, allow_missing: bool = False) -> bool:
        """Delete a sandbox; False when it did not exist (and ``allow_missing``)."""
        request = pb.DeleteSandboxRequest(
            workspace_scope=self._scope(), name=name, allow_missing=allow_missing
        )
        with self._calling("delete sandbox", name):
            reply = self._stub.DeleteSandbox(request, timeout=self._timeout)
        return bool(reply.outcome != pb.DELETION_OUTCOME_ALREADY_ABSENT)

    def stop_sandbox(self, name: str) -> SandboxInfo:
        request = pb.StopSandboxRequest(workspace_scope=self._scope(), name=name)
        with self._calling("stop sandbox", name):
            reply = self._stub.StopSandbox(request, timeout=self._timeout)
        return _info(reply.sandbox)

    def start_sandbox(self, name: str) -> SandboxInfo:
        request = pb.StartSandboxRequest(workspace_scope=self._scope(), name=name)
        with self._calling("start sandbox", name):
            reply = self._stub.StartSandbox(request, timeout=self._timeout)
        return _info(reply.sandbox)

    def wait_ready(self, name: str, *, timeout: float = 120.0, poll: float = 0.5) -> SandboxInfo:
        """Wait until the sandbox is READY: looks 50 ms apart at first (a sandbox of a warm
        image is Ready within a second), then every ``poll`` seconds.

        :raises ReadinessTimeout: on timeout, or at once when it is ERROR or STOPPED.
        """

        def observe() -> SandboxInfo:
            info = self.get_sandbox(name)
            if info.phase in {"ERROR", "STOPPED"}:
                raise GiveUp(f"it is {info.phase}: {info.reason}")
            return info

        return poll_until(
            observe,
            lambda info: info.phase == "READY",
            timeout=timeout,
            what=f"sandbox {name!r}",
            describe=lambda info: f"still {info.phase} ({info.reason or 'no reason given'})",
            schedule=(min(0.05, poll), 1.5, poll),
        )

    def exec(
        self,
        name: str,
        command: Sequence[str],
        *,
        stdin: bytes | None = None,
        environment: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` in the sandbox; returns its exit code and output."""
        request = pb.ExecSandboxRequest(
            workspace_scope=self._scope(),
            sandbox=name,
            command=list(command),
            environment=dict(environment or {}),
            workdir=workdir or "",
            stdin=stdin or b"",
        )
        if timeout:
            request.execution_timeout.FromNanoseconds(int(timeout * 1e9))
        deadline = max(self._timeout, (timeout or 0) + 10)
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        exit_code: int | None = None
        with self._calling("exec in sandbox", name):
            for event in self._stub.ExecSandbox(request, timeout=deadline):
                which = event.WhichOneof("payload")
                if which == "stdout":
                    stdout.append(bytes(event.stdout.data))
                elif which == "stderr":
                    stderr.append(bytes(event.stderr.data))
                elif which == "exit":
                    exit_code = int(event.exit.exit_code)
        if exit_code is None:
            raise GatewayRpcError(
                f"exec in sandbox {name!r}: the stream ended without an exit code", code="OK"
            )
        return ExecResult(exit_code, b"".join(stdout), b"".join(stderr))

    # -- SSH sessions --

    def transport(self) -> str:
        """How the gateway reaches its sandboxes, as its ``GetGatewayInfo`` says (a gateway that
        does not say speaks the seeds' ``nssh1``)."""
        with self._calling("get gateway info"):
            info = self._stub.GetGatewayInfo(pb.GetGatewayInfoRequest(), timeout=self._timeout)
        for extension in info.extensions:
            if extension.configured_name == contract.TRANSPORT_INFO_NAME:
                return str(extension.implementation_name)
        return contract.DEFAULT_TRANSPORT

    def create_ssh_session(self, name: str) -> SshSession:
        request = pb.CreateSshSessionRequest(workspace_scope=self._scope(), sandbox=name)
        with self._calling("create SSH session", name):
            reply = self._stub.CreateSshSession(request, timeout=self._timeout)
        expires = (
            reply.expiration_time.ToNanoseconds() / 1e9 if reply.HasField("expiration_time") else 0
        )
        return SshSession(
            token=str(reply.token),
            sandbox_id=str(reply.sandbox_id),
            gateway_host=str(reply.gateway_host),
            gateway_port=int(reply.gateway_port),
            host_key_fingerprint=str(reply.host_key_fingerprint),
            expires_at=float(expires),
        )

    # -- the supervisor side (conformance checks present a token a supervisor was given) --

    def exchange_sandbox_token(self, token: str) -> str:
        """``IssueSandboxToken`` with ``token`` as the bearer credential: a new token for its
        sandbox, when this gateway signed ``token`` (expired or not) and the sandbox exists.

        :raises GatewayRpcError: ``UNAUTHENTICATED`` when the gateway does not accept ``token``
            (its words say why: not signed by this gateway, expired, malformed).
        """
        metadata = (("authorization", f"Bearer {token}"),)  # the standard bearer header
        with self._calling("issue sandbox token"):
            reply = self._stub.IssueSandboxToken(
                pb.IssueSandboxTokenRequest(), metadata=metadata, timeout=self._timeout
            )
        return str(reply.token)

    def revoke_ssh_session(self, token: str, *, allow_missing: bool = True) -> bool:
        """Revoke a session token; False when it was unknown or already revoked."""
        request = pb.RevokeSshSessionRequest(token=token, allow_missing=allow_missing)
        with self._calling("revoke SSH session"):
            reply = self._stub.RevokeSshSession(request, timeout=self._timeout)
        return bool(reply.outcome == pb.DELETION_OUTCOME_COMPLETED)


def _info(sandbox: Any) -> SandboxInfo:
    status = sandbox.status
    reason = ""
    session = None
    for condition in status.conditions:
        if condition.type == "Ready":
            reason = str(condition.message)
        elif condition.type == contract.SUPERVISOR_SESSION_CONDITION:
            session = SupervisorSession(
                live=condition.status == "True",
                reason=str(condition.reason),
                message=str(condition.message),
            )
    return SandboxInfo(
        id=str(sandbox.metadata.id),
        name=str(sandbox.metadata.name),
        workspace=str(sandbox.metadata.workspace),
        phase=phase_name(int(status.phase)),
        reason=reason,
        image=str(sandbox.spec.template.image),
        host_key_fingerprint=str(sandbox.host_key_fingerprint),
        host_public_key=str(sandbox.metadata.annotations.get(HOST_PUBLIC_KEY_ANNOTATION, "")),
        restart_count=int(status.restart_count),
        labels=dict(sandbox.metadata.labels),
        environment=dict(sandbox.spec.environment),
        supervisor_session=session,
    )
