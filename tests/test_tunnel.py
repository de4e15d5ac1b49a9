"""The gateway's CONNECT handler: validation, limits, the sandbox handshake and the relay.

Most tests host :func:`serve_connect` behind a local asyncio server (as the TLS front does) with a
fake resolver and a fake sandbox that checks the NSSH1 preface. The last ones go to a real sandbox
container, and through ``ssh-proxy`` with real OpenSSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.host.sshproxy.ssh_command import ssh_command
from openshell_core.images import ImageSet
from openshell_core.pki import generate_pki, generate_ssh_host_key, write_pki
from openshell_core.server.tunnel import (
    TunnelLimiter,
    TunnelRefused,
    TunnelTarget,
    parse_request_head,
    serve_connect,
    status_line,
)
from openshell_core.wire.exec1 import ExecRequest, ExecStream, read_frame
from openshell_core.wire.nssh1 import (
    ERR_LINE,
    OK_LINE,
    PrefaceVerifier,
    Verdict,
    generate_secret,
    read_line_async,
)

SECRET = generate_secret()


@dataclass
class Handlers:
    """Server-side connection tasks, so a test can let them finish before its loop closes."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def track(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await handler(reader, writer)
            except OSError:
                pass
            finally:
                await close(writer)

        return tracked

    async def finish(self) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass
class FakeSandbox:
    """Port 2222 as the supervisor serves it: verify the preface, then echo (or answer ERR)."""

    secret: str = SECRET
    reject: bool = False
    prefaces: list[bytes] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    handlers: Handlers = field(default_factory=Handlers)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.handlers.finish()

    async def start(self) -> FakeSandbox:
        SANDBOXES.append(self)
        verifier = PrefaceVerifier(self.secret)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await read_line_async(reader)
            self.prefaces.append(line)
            verdict = verifier.verify(line)
            self.verdicts.append(verdict)
            if self.reject or not verdict.accepted:
                writer.write(ERR_LINE)
                return
            writer.write(OK_LINE)
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.write(b"bye")  # after the client's half-close, the answer still flows

        self.server = await asyncio.start_server(self.handlers.track(serve), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


#: Fake sandboxes started by the current test; the gateway context closes them.
SANDBOXES: list[FakeSandbox] = []


@dataclass
class FakeResolver:
    port: int
    refuse: TunnelRefused | None = None
    secret: str = SECRET
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def resolve(self, sandbox_id: str, token: str) -> TunnelTarget:
        self.calls.append((sandbox_id, token))
        if self.refuse is not None:
            raise self.refuse
        return TunnelTarget(sandbox_id, "127.0.0.1", self.port, self.secret, token)


@contextlib.asynccontextmanager
async def gateway(
    resolver: FakeResolver, limiter: TunnelLimiter | None = None
) -> AsyncIterator[int]:
    """A plain-TCP stand-in for the TLS front: read the head, hand over to serve_connect."""

    handlers = Handlers()

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await serve_connect(
            reader, writer, head, resolver, limiter=limiter or TunnelLimiter(), delays=(0,)
        )

    server = await asyncio.start_server(handlers.track(front), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await handlers.finish()
        for sandbox in SANDBOXES:
            await sandbox.close()
        SANDBOXES.clear()


def head(
    *, method: str = "CONNECT", path: str = "/connect/ssh", sandbox: str | None = "sbx-1",
    token: str | None = "tok-1",
) -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    if sandbox is not None:
        lines.append(f"X-Sandbox-Id: {sandbox}")
    if token is not None:
        lines.append(f"X-Sandbox-Token: {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_tunnel(
    port: int, request: bytes
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    return answer, reader, writer


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def status_of(request: bytes, resolver: FakeResolver | None = None) -> bytes:
    sandbox = await FakeSandbox().start()
    async with gateway(resolver or FakeResolver(sandbox.port)) as port:
        answer, _, writer = await open_tunnel(port, request)
        await close(writer)
        return answer


# -- request validation ------------------------------------------------------------------------


def test_non_connect_method_is_405() -> None:
    async def scenario() -> None:
        assert await status_of(head(method="GET")) == b"HTTP/1.1 405 method not allowed\r\n\r\n"

    run(scenario)


def test_missing_token_header_is_401() -> None:
    async def scenario() -> None:
        assert (await status_of(head(token=None))).startswith(b"HTTP/1.1 401 ")

    run(scenario)


def test_missing_sandbox_header_is_401() -> None:
    async def scenario() -> None:
        assert (await status_of(head(sandbox=None))).startswith(b"HTTP/1.1 401 ")

    run(scenario)


def test_empty_header_value_is_400() -> None:
    async def scenario() -> None:
        assert (await status_of(head(token=""))).startswith(b"HTTP/1.1 400 ")
        assert (await status_of(head(sandbox=" "))).startswith(b"HTTP/1.1 400 ")

    run(scenario)


def test_other_path_is_404() -> None:
    async def scenario() -> None:
        assert (await status_of(head(path="/elsewhere"))).startswith(b"HTTP/1.1 404 ")

    run(scenario)


def test_header_names_are_case_insensitive() -> None:
    parsed = parse_request_head(b"CONNECT /connect/ssh HTTP/1.1\r\nx-SANDBOX-id:  a \r\n\r\n")
    assert parsed.headers == {"x-sandbox-id": "a"}


def test_garbage_head_is_400() -> None:
    with pytest.raises(TunnelRefused) as refused:
        parse_request_head(b"hello\r\n\r\n")
    assert refused.value.status == 400


def test_status_line_never_carries_a_line_break() -> None:
    assert status_line(502, "a\r\nb") == b"HTTP/1.1 502 a  b\r\n\r\n"


def test_resolver_refusal_is_answered_with_its_status() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(0, refuse=TunnelRefused(412, "sandbox is not ready"))
        answer = await status_of(head(), resolver)
        assert answer == b"HTTP/1.1 412 sandbox is not ready\r\n\r\n"
        assert resolver.calls == [("sbx-1", "tok-1")]

    run(scenario)


# -- the sandbox side --------------------------------------------------------------------------


def test_tunnel_signs_the_preface_with_the_target_secret_and_session_token() -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox().start()
        async with gateway(FakeResolver(sandbox.port)) as port:
            answer, _, writer = await open_tunnel(port, head(token="session-token"))
            await close(writer)
        assert answer == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        assert sandbox.verdicts == [Verdict.OK]
        assert sandbox.prefaces[0].split()[1] == b"session-token"

    run(scenario)


def test_tunnel_relays_both_ways_and_passes_the_half_close_on() -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox().start()
        async with gateway(FakeResolver(sandbox.port)) as port:
            _, reader, writer = await open_tunnel(port, head())
            writer.write(b"ping")
            await writer.drain()
            assert await reader.readexactly(9) == b"echo:ping"
            writer.write_eof()
            assert await reader.read() == b"bye"
            await close(writer)

    run(scenario)


def test_sandbox_rejecting_the_handshake_is_502_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox(reject=True).start()
        answer = await status_of(head(), FakeResolver(sandbox.port))
        assert answer == b"HTTP/1.1 502 sandbox handshake rejected\r\n\r\n"

    run(scenario)
    assert "sandbox handshake rejected" in caplog.text


def test_gateway_secret_other_than_the_sandbox_one_is_502() -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox().start()
        resolver = FakeResolver(sandbox.port, secret=generate_secret())
        assert (await status_of(head(), resolver)).startswith(b"HTTP/1.1 502 ")
        assert sandbox.verdicts == [Verdict.BAD_SIGNATURE]

    run(scenario)


def test_unreachable_sandbox_is_502() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    async def scenario() -> None:
        answer = await status_of(head(), FakeResolver(closed_port))
        assert answer == b"HTTP/1.1 502 sandbox unreachable\r\n\r\n"

    run(scenario)


# -- limits ------------------------------------------------------------------------------------


def test_fourth_tunnel_with_one_token_is_429_until_one_closes() -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox().start()
        limiter = TunnelLimiter()
        async with gateway(FakeResolver(sandbox.port), limiter) as port:
            held = [await open_tunnel(port, head()) for _ in range(3)]
            assert all(answer.startswith(b"HTTP/1.1 200 ") for answer, _, _ in held)
            answer, _, writer = await open_tunnel(port, head())
            assert answer.startswith(b"HTTP/1.1 429 ")
            await close(writer)
            other, _, writer = await open_tunnel(port, head(token="tok-2"))
            assert other.startswith(b"HTTP/1.1 200 ")
            await close(writer)
            _, first_reader, first_writer = held[0]
            first_writer.write_eof()
            assert await first_reader.read() == b"bye"  # that tunnel has ended
            await close(first_writer)
            while limiter.open_count(token="tok-1") == 3:  # the gateway's side ends just after
                await asyncio.sleep(0.01)
            again, _, writer = await open_tunnel(port, head())
            assert again.startswith(b"HTTP/1.1 200 ")
            await close(writer)
            for _, _, held_writer in held[1:]:
                await close(held_writer)

    run(scenario)


def test_tunnels_beyond_the_sandbox_limit_are_429() -> None:
    async def scenario() -> None:
        sandbox = await FakeSandbox().start()
        limiter = TunnelLimiter(per_sandbox=2)
        async with gateway(FakeResolver(sandbox.port), limiter) as port:
            held = [await open_tunnel(port, head(token=f"t{index}")) for index in range(2)]
            answer, _, writer = await open_tunnel(port, head(token="t9"))
            assert answer.startswith(b"HTTP/1.1 429 ")
            await close(writer)
            for _, _, held_writer in held:
                await close(held_writer)

    run(scenario)


def test_limiter_forgets_closed_tunnels() -> None:
    limiter = TunnelLimiter(per_token=1)
    with limiter.hold("t", "s"):
        assert limiter.open_count(token="t") == 1
        with pytest.raises(TunnelRefused), limiter.hold("t", "s"):
            pass
    assert limiter.open_count(token="t") == 0
    assert limiter.open_count(sandbox_id="s") == 0


# -- a real sandbox ----------------------------------------------------------------------------


@dataclass
class RealSandbox:
    address: str
    secret: str
    host_public_key: str


@pytest.fixture(scope="module")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("tunnel-keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def real_sandbox(engine: Engine, images: ImageSet, user_key: Path) -> Iterator[RealSandbox]:
    suffix = uuid.uuid4().hex[:10]
    network, name = f"openshell-test-net-{suffix}", f"openshell-test-sbx-{suffix}"
    secret = generate_secret()
    private, public = generate_ssh_host_key()
    engine.create_network(network, labels=labels.ownership(role="test"))
    try:
        engine.create_container(
            name=name,
            image=images.sandbox,
            environment={
                "OPENSHELL_SSH_HANDSHAKE_SECRET": secret,
                "OPENSHELL_SSH_HOST_KEY": private,
                "OPENSHELL_SSH_AUTHORIZED_KEYS": user_key.with_suffix(".pub").read_text(),
            },
            labels=labels.ownership(role="test"),
            network=network,
        )
        engine.start_container(name)
        info = engine.inspect_container(name) or {}
        address = info["NetworkSettings"]["Networks"][network]["IPAddress"]
        _wait_listening(engine, name, address)
        yield RealSandbox(address, secret, public)
    finally:
        engine.remove_container(name)
        engine.remove_network(network)


def _wait_listening(engine: Engine, name: str, address: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection((address, 2222), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                logs = "\n".join(engine.container_logs(name, tail=30))
                pytest.fail(f"sandbox {name} never listened:\n{logs}")
            time.sleep(0.1)


def real_resolver(sandbox: RealSandbox) -> FakeResolver:
    resolver = FakeResolver(2222, secret=sandbox.secret)

    async def resolve(sandbox_id: str, token: str) -> TunnelTarget:
        return TunnelTarget(sandbox_id, sandbox.address, 2222, sandbox.secret, token)

    resolver.resolve = resolve  # type: ignore[method-assign]
    return resolver


def test_tunnel_to_a_real_sandbox_runs_a_command(real_sandbox: RealSandbox) -> None:
    async def scenario() -> None:
        async with gateway(real_resolver(real_sandbox)) as port:
            answer, reader, writer = await open_tunnel(port, head())
            assert answer == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            writer.write(ExecRequest(["sh", "-c", "echo through-the-tunnel"]).encode())
            await writer.drain()
            events = []
            while (event := await read_frame(reader)) is not None:
                events.append(event)
            await close(writer)
        assert [(e.kind, e.data) for e in events] == [
            (ExecStream.STDOUT, b"through-the-tunnel\n"),
            (ExecStream.EXIT, b"0"),
        ]

    run(scenario)


def test_tunnel_to_a_real_sandbox_reaches_sshd(real_sandbox: RealSandbox) -> None:
    async def scenario() -> None:
        async with gateway(real_resolver(real_sandbox)) as port:
            _, reader, writer = await open_tunnel(port, head())
            writer.write(b"SSH-2.0-OpenShellTest\r\n")
            await writer.drain()
            banner = await reader.readline()
            await close(writer)
        assert banner.startswith(b"SSH-2.0-OpenSSH")

    run(scenario)


def test_ssh_through_ssh_proxy_and_the_tunnel_reaches_the_sandbox(
    real_sandbox: RealSandbox, user_key: Path, tmp_path: Path
) -> None:
    """The user's whole path but the gRPC API: ssh -> ssh-proxy -> TLS CONNECT -> tunnel ->
    NSSH1 -> supervisor -> sshd, with the command line `sandbox connect` uses."""
    config = tmp_path / "config"
    gateway_dir = config / "openshell" / "gateways" / "lab"
    bundle = generate_pki()
    write_pki(tmp_path / "pki", bundle)
    (gateway_dir / "mtls").mkdir(parents=True)
    for source, target in (
        ("ca.crt", "ca.crt"),
        ("client.crt", "tls.crt"),
        ("client.key", "tls.key"),
    ):
        (gateway_dir / "mtls" / target).write_bytes((tmp_path / "pki" / source).read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "pki/server.crt", tmp_path / "pki/server.key")
    context.load_verify_locations(tmp_path / "pki/ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED

    async def scenario() -> tuple[int, bytes, bytes]:
        resolver = real_resolver(real_sandbox)

        async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            await serve_connect(reader, writer, request, resolver, limiter=TunnelLimiter())

        server = await asyncio.start_server(front, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        (gateway_dir / "metadata.json").write_text(
            json.dumps({"name": "lab", "gateway_endpoint": f"https://127.0.0.1:{port}"})
        )
        argv = ssh_command(
            "lab",
            "sbx-e2e",
            "session-token",
            real_sandbox.host_public_key,
            user_key,
            ["cat /etc/hostname >/dev/null && echo via-ssh-proxy"],
            known_hosts_file=tmp_path / "known_hosts",
        )
        async with server:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "XDG_CONFIG_HOME": str(config)},
            )
            out, err = await process.communicate()
        return process.returncode or 0, out, err

    code, out, err = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert (code, out) == (0, b"via-ssh-proxy\n"), err.decode()
    assert sys.executable  # the ProxyCommand runs this interpreter's pytest-openshell
