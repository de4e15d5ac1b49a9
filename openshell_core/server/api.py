"""The gateway's gRPC servicer for ``openshell.v1.OpenShell`` (the sandbox lifecycle subset).

Implemented: Health, GetGatewayInfo, CreateSandbox, GetSandbox, ListSandboxes, DeleteSandbox,
StopSandbox, StartSandbox, ExecSandbox, CreateSshSession, RevokeSshSession. Every other method is
the SDK's generated default, which answers UNIMPLEMENTED. Errors of :mod:`openshell_core.errors`
become gRPC status codes in one place, :func:`_status_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from openshell_core.errors import NotFoundError, OpenShellError, StateError, UsageError
from openshell_core.faults import Fault
from openshell_core.grpc_api import (
    DEFAULT_WORKSPACE,
    HINT_METADATA,
    HOST_PUBLIC_KEY_ANNOTATION,
    Servicer,
    dm,
    pb,
    phase_value,
    selected_workspace,
)
from openshell_core.server.durability_faults import cache_write, is_append
from openshell_core.server.model import Phase, SandboxRecord
from openshell_core.server.sandbox_link import Dial, exec_in_sandbox
from openshell_core.server.sandbox_tokens import SandboxToken, TokenRefused
from openshell_core.server.sandboxes import SandboxService
from openshell_core.server.store import StoreConflict
from openshell_core.server.supervisor_hub import SupervisorHub, frames_to
from openshell_core.server.tunnel import TunnelLimiter, TunnelRefused
from openshell_core.wire import contract
from openshell_core.wire.exec1 import ExecEvent
from openshell_core.wire.nssh1 import HandshakeError, client_handshake

log = logging.getLogger("openshell.server.api")

_Response = TypeVar("_Response")
#: Seconds a ForwardTcp client has to send its init frame (and the sandbox to pass the preface).
FORWARD_INIT_TIMEOUT: Final = 10.0
FORWARD_CHUNK: Final = 64 * 1024
#: ForwardTcp streams share the CONNECT tunnels' bounds (per session token, per sandbox).
FORWARD_LIMITER: Final = TunnelLimiter()
_Method = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Response]]


def _status_of(exc: OpenShellError) -> grpc.StatusCode:
    """The one place where our error families become gRPC status codes."""
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, StoreConflict):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, StateError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def _translated(method: _Method[_Response]) -> _Method[_Response]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Response:
        try:
            return await method(self, request, context)
        except OpenShellError as exc:
            if exc.hint:  # the next thing to do travels beside the message (HINT_METADATA)
                context.set_trailing_metadata(((HINT_METADATA, exc.hint.encode()),))
            await context.abort(_status_of(exc), exc.message)

    return wrapper


class GatewayServicer(Servicer):
    """Sandbox lifecycle over gRPC, backed by :class:`SandboxService`."""

    def __init__(self, service: SandboxService, *, version: str, gateway_port: int) -> None:
        self._service = service
        self._version = version
        self._gateway_port = gateway_port

    # -- gateway --

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status=pb.SERVICE_STATUS_HEALTHY, version=self._version)

    async def GetGatewayInfo(
        self, request: pb.GetGatewayInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetGatewayInfoResponse:
        return pb.GetGatewayInfoResponse(
            status=pb.SERVICE_STATUS_HEALTHY,
            gateway_version=self._version,
            compute_drivers=[pb.ComputeDriverInfo(name=self._service.driver.name)],
            extensions=[
                pb.NegotiatedExtensionInfo(
                    configured_name=contract.TRANSPORT_INFO_NAME,
                    implementation_name=self._service.transport,
                )
            ],
        )

    # -- sandboxes --

    @_translated
    async def CreateSandbox(
        self, request: pb.CreateSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SandboxResponse:
        workspace = _one_workspace(request.workspace_scope)
        if request.workload_template:
            raise UsageError("workload templates are not supported by the reference gateway")
        spec = request.spec
        environment = {**dict(spec.template.environment), **dict(spec.environment)}
        record = await self._service.create(
            workspace=workspace,
            name=request.name,
            image=spec.template.image,
            environment=environment,
            labels=dict(request.labels),
            command=list(spec.command),
        )
        return pb.SandboxResponse(sandbox=self._message(record))

    @_translated
    async def GetSandbox(
        self, request: pb.GetSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SandboxResponse:
        record = self._service.find(_one_workspace(request.workspace_scope), request.name)
        return pb.SandboxResponse(sandbox=self._message(record))

    @_translated
    async def ListSandboxes(
        self, request: pb.ListSandboxesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSandboxesResponse:
        selector = _parse_selector(request.label_selector)
        records = [
            record
            for record in self._service.list(selected_workspace(request.workspace_scope))
            if all(record.labels.get(key) == value for key, value in selector.items())
        ]
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise UsageError(f"invalid page token {request.page_token!r}") from None
        size = request.page_size if request.page_size > 0 else 100
        page = records[start : start + size]
        following = str(start + size) if start + size < len(records) else ""
        return pb.ListSandboxesResponse(
            sandboxes=[self._message(record) for record in page], next_page_token=following
        )

    @_translated
    async def DeleteSandbox(
        self, request: pb.DeleteSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteSandboxResponse:
        try:
            record = self._service.find(_one_workspace(request.workspace_scope), request.name)
        except NotFoundError:
            if request.allow_missing:
                return pb.DeleteSandboxResponse(outcome=pb.DELETION_OUTCOME_ALREADY_ABSENT)
            raise
        await self._service.delete(record)
        return pb.DeleteSandboxResponse(outcome=pb.DELETION_OUTCOME_COMPLETED, sandbox_id=record.id)

    @_translated
    async def StopSandbox(
        self, request: pb.StopSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SandboxResponse:
        record = self._service.find(_one_workspace(request.workspace_scope), request.name)
        return pb.SandboxResponse(sandbox=self._message(await self._service.stop(record)))

    @_translated
    async def StartSandbox(
        self, request: pb.StartSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SandboxResponse:
        record = self._service.find(_one_workspace(request.workspace_scope), request.name)
        return pb.SandboxResponse(sandbox=self._message(await self._service.start(record)))

    # -- commands and sessions --

    async def ExecSandbox(
        self, request: pb.ExecSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExecSandboxEvent]:
        try:
            record = self._ready(_one_workspace(request.workspace_scope), request.sandbox)
            if not request.command:
                raise UsageError("command must not be empty")
        except OpenShellError as exc:
            if exc.hint:  # the next thing to do travels beside the message (HINT_METADATA)
                context.set_trailing_metadata(((HINT_METADATA, exc.hint.encode()),))
            await context.abort(_status_of(exc), exc.message)
        host, port = self._service.driver.endpoint(record.id)
        timeout = request.execution_timeout.ToTimedelta().total_seconds() or None

        def run() -> AsyncIterator[ExecEvent]:
            return exec_in_sandbox(
                host,
                port,
                self._service.secret,
                list(request.command),
                env=dict(request.environment) or None,
                workdir=request.workdir or None,
                stdin=bytes(request.stdin) if request.stdin else None,
                token=str(uuid.uuid4()),
                dial=self._dial(record.id),
            )

        if self._service.config.has(Fault.LOST_APPEND) and is_append(request.command):
            cache_write(self._service.spawn, run, f"in {record.name}")
            yield pb.ExecSandboxEvent(exit=pb.ExecSandboxExit(exit_code=0))
            return
        events = run()
        exit_code: int | None = None
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if event.kind == "stdout":
                        yield pb.ExecSandboxEvent(stdout=pb.ExecSandboxStdout(data=event.data))
                    elif event.kind == "stderr":
                        yield pb.ExecSandboxEvent(stderr=pb.ExecSandboxStderr(data=event.data))
                    elif event.kind == "exit":
                        exit_code = event.exit_code
        except TimeoutError:
            exit_code = 124
        except OpenShellError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        if exit_code is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the sandbox closed the command stream early"
            )
        yield pb.ExecSandboxEvent(exit=pb.ExecSandboxExit(exit_code=exit_code))

    @_translated
    async def CreateSshSession(
        self, request: pb.CreateSshSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateSshSessionResponse:
        record = self._service.find(_one_workspace(request.workspace_scope), request.sandbox)
        session = self._service.open_session(record)
        response = pb.CreateSshSessionResponse(
            sandbox_id=record.id,
            token=session.token,
            gateway_host="127.0.0.1",
            gateway_port=self._gateway_port,
            gateway_scheme="https",
            host_key_fingerprint=record.host_key_fingerprint,
        )
        if session.expires_at > 0:
            response.expiration_time.CopyFrom(_timestamp(session.expires_at))
        return response

    @_translated
    async def RevokeSshSession(
        self, request: pb.RevokeSshSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeSshSessionResponse:
        before = self._service.store.revoke_session(request.token)
        if before is None:
            if request.allow_missing:
                return pb.RevokeSshSessionResponse(outcome=pb.DELETION_OUTCOME_ALREADY_ABSENT)
            raise NotFoundError("ssh session", "(token)")
        outcome = (
            pb.DELETION_OUTCOME_ALREADY_ABSENT if before.revoked else pb.DELETION_OUTCOME_COMPLETED
        )
        return pb.RevokeSshSessionResponse(outcome=outcome)

    async def ForwardTcp(
        self,
        request_iterator: AsyncIterator[pb.TcpForwardFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.TcpForwardFrame]:
        """A byte stream to a sandbox: its SSH server, or (``supervisor`` transport) a loopback
        port in it. The first frame is ``init`` with the token of ``CreateSshSession``."""
        frames = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(frames), FORWARD_INIT_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no TcpForwardInit in time")
        if not first.HasField("init"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be init")
        init = first.init
        refusal = self._forward_refusal(init)
        if refusal is not None:
            code, why = refusal
            # logged with its reason; the token never is
            log.warning(
                "ForwardTcp to sandbox %r from %s refused: %s", init.sandbox, context.peer(), why
            )
            await context.abort(code, why)
        record = self._forward_sandbox(init)
        assert record is not None  # (checked above)
        token = init.authorization_token
        try:
            with FORWARD_LIMITER.hold(token, record.id):
                reader, writer = await self._forward_link(record.id, init, context)
                await context.send_initial_metadata(((contract.FORWARD_OPEN_METADATA, "1"),))
                log.info("ForwardTcp to sandbox %s open", record.id)
                inbound = asyncio.create_task(frames_to(frames, writer))
                try:
                    while data := await reader.read(FORWARD_CHUNK):
                        yield pb.TcpForwardFrame(data=data)
                finally:
                    inbound.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await inbound
                    writer.close()
                log.info("ForwardTcp to sandbox %s closed", record.id)
        except TunnelRefused as refused:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused.reason)

    def _forward_refusal(self, init: pb.TcpForwardInit) -> tuple[grpc.StatusCode, str] | None:
        """Why a forward may not open (its status and words), or None."""
        session = self._service.store.get_session(init.authorization_token)
        if session is None or not session.usable():
            if not init.authorization_token:
                why = "no authorization token"
            elif session is None:
                why = "unknown session token"
            else:
                why = "session token revoked or expired"
            return grpc.StatusCode.UNAUTHENTICATED, why
        record = self._forward_sandbox(init)
        if record is None:
            return grpc.StatusCode.NOT_FOUND, f"sandbox {init.sandbox!r} not found"
        if session.sandbox_id != record.id:
            return grpc.StatusCode.PERMISSION_DENIED, "session token is for another sandbox"
        if record.phase is not Phase.READY:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sandbox is not ready ({record.phase.value})",
            )
        return self._target_refusal(init)

    def _forward_sandbox(self, init: pb.TcpForwardInit) -> SandboxRecord | None:
        """The sandbox ``init`` names: by name in its workspace, or by id (ssh-proxy knows only
        the id)."""
        try:
            return self._service.find(init.workspace or DEFAULT_WORKSPACE, init.sandbox)
        except NotFoundError:
            record = self._service.get(init.sandbox)
            return record if record is not None and record.phase is not Phase.DELETING else None

    def _target_refusal(self, init: pb.TcpForwardInit) -> tuple[grpc.StatusCode, str] | None:
        if init.HasField("tcp"):
            if self._service.hub is None:
                return (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"tcp targets need the {self._supervisor_word} transport",
                )
            if not contract.is_loopback(init.tcp.host) or not 0 < init.tcp.port < 65536:
                return (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "target.tcp must be a loopback address and port in the sandbox",
                )
        elif not init.HasField("ssh"):
            return grpc.StatusCode.INVALID_ARGUMENT, "init names no target (ssh or tcp)"
        return None

    @property
    def _supervisor_word(self) -> str:
        return contract.TRANSPORT_SUPERVISOR

    async def _forward_link(
        self, sandbox_id: str, init: pb.TcpForwardInit, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The stream to the target: a relay to a loopback port, or to the supervisor's SSH side
        after the gateway's NSSH1 preface (bound to the session token, as a CONNECT tunnel)."""
        try:
            if init.HasField("tcp"):
                assert self._service.hub is not None
                target = pb.RelayOpen(tcp=init.tcp)
                return await self._service.hub.open_relay(sandbox_id, target=target)
            reader, writer = await self._service.open_link(sandbox_id)
        except (OSError, TimeoutError, OpenShellError) as exc:
            why = exc.message if isinstance(exc, OpenShellError) else (str(exc) or "timed out")
            log.warning("ForwardTcp to sandbox %s: unreachable (%s)", sandbox_id, why)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sandbox unreachable")
        try:
            await asyncio.wait_for(
                client_handshake(reader, writer, self._service.secret, init.authorization_token),
                FORWARD_INIT_TIMEOUT,
            )
        except (HandshakeError, OSError, TimeoutError, ValueError) as exc:
            writer.close()
            log.warning("ForwardTcp to sandbox %s: handshake rejected (%s)", sandbox_id, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sandbox handshake rejected")
        return reader, writer

    # -- the supervisor side (``supervisor`` transport; sandbox tokens, never user credentials) --

    async def ConnectSupervisor(
        self,
        request_iterator: AsyncIterator[pb.SupervisorMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.GatewayMessage]:
        hub = await self._hub(context)
        async for message in hub.connect(request_iterator, context):
            yield message

    async def RelayStream(
        self,
        request_iterator: AsyncIterator[pb.RelayFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.RelayFrame]:
        hub = await self._hub(context)
        async for frame in hub.relay(request_iterator, context):
            yield frame

    async def IssueSandboxToken(
        self, request: pb.IssueSandboxTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.IssueSandboxTokenResponse:
        # The bootstrap path of a supervisor whose token expired while it could not renew it
        # (the gateway was down longer than the token's life): a token this gateway signed, for
        # a sandbox that still exists, over the gateway's mutual TLS, is exchanged even when
        # expired. RefreshSandboxToken keeps to unexpired tokens (and so does this one under the
        # fault token-expiry-strands: the supervisor then never reconnects).
        exchange = not self._service.config.has(Fault.TOKEN_EXPIRY_STRANDS)
        token = await self._renew(context, "IssueSandboxToken", allow_expired=exchange)
        response = pb.IssueSandboxTokenResponse(token=token.token)
        if token.expires_at:
            response.expiration_time.CopyFrom(_timestamp(token.expires_at))
        return response

    async def RefreshSandboxToken(
        self, request: pb.RefreshSandboxTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RefreshSandboxTokenResponse:
        token = await self._renew(context, "RefreshSandboxToken")
        response = pb.RefreshSandboxTokenResponse(token=token.token, sandbox_token=token.token)
        if token.expires_at:
            response.expiration_time.CopyFrom(_timestamp(token.expires_at))
            response.sandbox_expiration_time.CopyFrom(_timestamp(token.expires_at))
        return response

    async def _hub(self, context: grpc.aio.ServicerContext[Any, Any]) -> SupervisorHub:
        hub = self._service.hub
        if hub is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this gateway speaks the {self._service.transport} transport: it dials its "
                "supervisors",
            )
            raise AssertionError("unreachable")  # abort raises
        return hub

    async def _renew(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        call: str,
        *,
        allow_expired: bool = False,
    ) -> SandboxToken:
        """A new token for the caller's sandbox, in exchange for its current one."""
        hub = await self._hub(context)
        try:
            current = hub.authenticate(context, allow_expired=allow_expired)
        except TokenRefused as refused:
            log.warning("%s from %s refused: %s", call, context.peer(), refused.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.message)
            raise AssertionError("unreachable") from None
        if not self._service.exists(current.sandbox_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, "sandbox not found")
        if allow_expired and current.expires_at and current.expires_at <= time.time():
            log.info("sandbox %s: an expired token exchanged for a new one", current.sandbox_id)
        return hub.signer.issue(current.sandbox_id)

    def _dial(self, sandbox_id: str) -> Dial | None:
        if self._service.hub is None:
            return None  # the TCP connection to the endpoint (nssh1)
        service = self._service

        async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await service.open_link(sandbox_id)

        return dial

    def _message(self, record: SandboxRecord) -> pb.Sandbox:
        """The API's ``Sandbox``; in the ``supervisor`` transport with a condition saying which
        supervisor session it is on (observable through the API: a returning supervisor shows
        as a new session, epoch or instance)."""
        sandbox = _sandbox(record)
        hub = self._service.hub
        if hub is None:
            return sandbox
        session = hub.record(record.id)
        live = hub.live(record.id)
        refused = None if live else hub.refusal(record.id)
        if session is not None:
            message = contract.SUPERVISOR_SESSION_MESSAGE.format(
                session=session.session_id, instance=session.instance_id, epoch=session.epoch
            )
        else:
            message = "no supervisor session yet"
        if live:
            reason = contract.SUPERVISOR_SESSION_CONNECTED
        elif refused is not None:
            reason, message = contract.SUPERVISOR_SESSION_REFUSED, refused
        else:
            reason = contract.SUPERVISOR_SESSION_DISCONNECTED
        condition = sandbox.status.conditions.add(
            type=contract.SUPERVISOR_SESSION_CONDITION,
            status="True" if live else "False",
            reason=reason,
            message=message,
        )
        if session is not None:
            condition.transition_time.CopyFrom(_timestamp(session.connected_at))
        return sandbox

    def _ready(self, workspace: str, name: str) -> SandboxRecord:
        record = self._service.find(workspace, name)
        if record.phase is not Phase.READY:
            raise StateError(f"sandbox {name!r} is not ready ({record.phase.value})")
        return record


def _one_workspace(selector: dm.WorkspaceSelector) -> str:
    workspace = selected_workspace(selector)
    if workspace is None:
        raise UsageError("this call needs one workspace, not all of them")
    return workspace


def _parse_selector(text: str) -> Mapping[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (equality selectors only)."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid label selector {text!r}", hint="use key=value[,key=value]")
        selector[key.strip()] = value.strip().removeprefix("=")
    return selector


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _sandbox(record: SandboxRecord) -> pb.Sandbox:
    """A store record as the API's ``Sandbox`` message."""
    ready = record.phase is Phase.READY
    condition = pb.SandboxCondition(
        type="Ready",
        status="True" if ready else "False",
        reason="" if ready else record.phase.value.title(),
        message=record.reason,
    )
    condition.transition_time.CopyFrom(_timestamp(record.updated_at))
    metadata = dm.ObjectMeta(
        id=record.id,
        name=record.name,
        workspace=record.workspace,
        labels=dict(record.labels),
        annotations={HOST_PUBLIC_KEY_ANNOTATION: record.host_key_public},
    )
    metadata.created_time.CopyFrom(_timestamp(record.created_at))
    return pb.Sandbox(
        metadata=metadata,
        spec=pb.SandboxSpec(
            environment=dict(record.environment),
            template=pb.SandboxTemplate(image=record.image),
            command=list(record.command),
        ),
        status=pb.SandboxStatus(
            phase=phase_value(record.phase.value),  # type: ignore[arg-type]
            conditions=[condition],
            restart_count=record.restart_count,
        ),
        host_key_fingerprint=record.host_key_fingerprint,
    )
