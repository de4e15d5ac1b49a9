"""ssh-proxy: the CONNECT exchange, the 412 retry schedule, the relay, and the ssh command line."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from openshell_core.cli import build_parser, main
from openshell_core.errors import OpenShellError
from openshell_core.grpc_api import Servicer, add_servicer_to_server, pb
from openshell_core.host.sshproxy import run_proxy
from openshell_core.host.sshproxy.forward import ForwardTunnel
from openshell_core.host.sshproxy.ssh_command import known_hosts_line, proxy_argv, ssh_command
from openshell_core.host.sshproxy.tunnel import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    Attempt,
    ConnectFailed,
    Dialer,
    GatewayTunnel,
    Streams,
    connect_request,
    connect_with_retry,
    parse_reason,
    parse_status,
)
from openshell_core.pki import generate_pki, generate_ssh_host_key, write_pki
from openshell_core.retry import backoff
from openshell_core.wire import contract

# -- the 412 retry schedule (pure: a fake clock that only the fake sleep moves) ------------------


@dataclass
class FakeTime:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def answers(*statuses: int) -> Callable[[], Awaitable[Attempt]]:
    """Attempts that answer ``statuses`` in turn, then the last one forever."""
    queue = list(statuses)
    streams = (asyncio.StreamReader(), None)

    async def attempt() -> Attempt:
        status = queue.pop(0) if len(queue) > 1 else queue[0]
        return Attempt(status, streams if status == 200 else None)  # type: ignore[arg-type]

    return attempt


def retry(*statuses: int) -> tuple[FakeTime, BaseException | None]:
    fake = FakeTime()

    async def scenario() -> None:
        await connect_with_retry(answers(*statuses), clock=fake.clock, sleep=fake.sleep)

    try:
        asyncio.run(scenario())
    except ConnectFailed as exc:
        return fake, exc
    return fake, None


def test_backoff_doubles_from_one_second_up_to_eight() -> None:
    schedule = backoff(FIRST_BACKOFF, 2.0, MAX_BACKOFF)
    assert [next(schedule) for _ in range(7)] == [1, 2, 4, 8, 8, 8, 8]


def test_412_is_retried_with_backoff_until_200() -> None:
    fake, failure = retry(412, 412, 412, 200)
    assert failure is None
    assert fake.sleeps == [1, 2, 4]


def test_412_for_a_minute_fails_with_the_status() -> None:
    fake, failure = retry(412)
    assert fake.sleeps == [1, 2, 4, 8, 8, 8, 8, 8, 8, 8]
    assert sum(fake.sleeps[:-1]) < 60 <= sum(fake.sleeps)
    assert isinstance(failure, ConnectFailed)
    assert failure.status == 412
    assert failure.message == "gateway CONNECT failed with status 412"


@pytest.mark.parametrize("status", [0, 400, 401, 404, 405, 429, 502])
def test_any_other_status_fails_at_once(status: int) -> None:
    fake, failure = retry(status)
    assert fake.sleeps == []
    assert isinstance(failure, ConnectFailed)
    assert failure.message == f"gateway CONNECT failed with status {status}"


def test_412_for_a_sandbox_in_error_fails_at_once_saying_so() -> None:
    """A sandbox still starting becomes Ready; one in ERROR never does: no minute of retries."""
    fake = FakeTime()

    async def attempt() -> Attempt:
        return Attempt(412, reason="sandbox is not ready (ERROR)")

    with pytest.raises(ConnectFailed) as failed:
        asyncio.run(connect_with_retry(attempt, clock=fake.clock, sleep=fake.sleep))
    assert fake.sleeps == []
    assert failed.value.final
    assert failed.value.message == (
        "gateway CONNECT failed with status 412 (sandbox is not ready (ERROR))"
    )
    assert "ERROR" in str(failed.value.hint)


def test_the_reason_phrase_of_the_gateways_answer_is_kept() -> None:
    assert parse_reason(b"HTTP/1.1 502 sandbox handshake rejected\r\n\r\n") == (
        "sandbox handshake rejected"
    )
    assert parse_reason(b"HTTP/1.1 200\r\n\r\n") == ""
    assert parse_reason(b"garbage") == ""


def test_200_at_once_does_not_sleep() -> None:
    fake, failure = retry(200)
    assert (fake.sleeps, failure) == ([], None)


# -- the request and the answer ----------------------------------------------------------------


def test_connect_request_carries_the_sandbox_id_and_token() -> None:
    assert connect_request("127.0.0.1:8080", "sbx", "tok") == (
        b"CONNECT /connect/ssh HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"X-Sandbox-Id: sbx\r\nX-Sandbox-Token: tok\r\n\r\n"
    )


def test_connect_request_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="token"):
        connect_request("h", "sbx", "tok\r\nX-Evil: 1")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 Connection Established\r\n\r\n", 200),
        (b"HTTP/1.0 412 Precondition Failed\r\n\r\n", 412),
        (b"HTTP/1.1 502\r\n\r\n", 502),
        (b"SSH-2.0-x\r\n", 0),
        (b"", 0),
        (b"HTTP/1.1 abc nope\r\n\r\n", 0),
    ],
)
def test_status_is_read_from_the_status_line(head: bytes, status: int) -> None:
    assert parse_status(head) == status


# -- the ssh command line ----------------------------------------------------------------------


def test_ssh_command_pins_the_host_key_under_an_alias(tmp_path: Path) -> None:
    _, public = generate_ssh_host_key()
    known = tmp_path / "kh" / "sbx-1"
    argv = ssh_command(
        "gw", "sbx-1", "tok", public + " comment", tmp_path / "id", ["ls", "-l"],
        known_hosts_file=known,
    )  # fmt: skip
    assert known.read_text() == known_hosts_line("sbx-1", public) + "\n"
    assert known.read_text().startswith("openshell-sbx-1 ssh-ed25519 ")
    assert argv[0] == "ssh"
    assert argv[-3:] == ["root@openshell-sbx-1", "ls", "-l"]
    options = {argv[i + 1].split("=", 1)[0]: argv[i + 1].split("=", 1)[1]
               for i, arg in enumerate(argv) if arg == "-o"}  # fmt: skip
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["HostKeyAlias"] == "openshell-sbx-1"
    assert options["UserKnownHostsFile"] == str(known)
    assert "ssh-proxy --gateway=gw --sandbox-id=sbx-1 --token=tok" in options["ProxyCommand"]


def test_ssh_accepts_the_command_line(tmp_path: Path) -> None:
    """``ssh -G`` evaluates every option without connecting: a typo would fail here."""
    _, public = generate_ssh_host_key()
    argv = ssh_command(
        "gw", "sbx-1", "tok", public, tmp_path / "id", known_hosts_file=tmp_path / "kh"
    )
    result = subprocess.run(
        ["ssh", "-G", *argv[1:]], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    settings = set(result.stdout.splitlines())
    assert "stricthostkeychecking true" in settings
    assert "hostkeyalias openshell-sbx-1" in settings
    assert "user root" in settings


def test_proxy_command_runs_this_installation() -> None:
    argv = proxy_argv("gw", "sbx", "tok")
    assert Path(argv[0]).parent == Path(sys.executable).parent
    assert argv[-4:] == ["ssh-proxy", "--gateway=gw", "--sandbox-id=sbx", "--token=tok"]


def test_a_token_that_begins_with_a_dash_reaches_ssh_proxy_intact() -> None:
    """Session tokens are URL-safe base64, so one in 64 begins with "-"."""
    argv = proxy_argv("gw", "sbx", "-Xy_z")
    args = build_parser().parse_args(argv[argv.index("ssh-proxy") :])
    assert (args.gateway, args.sandbox_id, args.token) == ("gw", "sbx", "-Xy_z")


def test_proxy_command_spells_out_resume_options_only_when_not_the_default() -> None:
    def options(**kwargs: object) -> list[str]:
        argv = proxy_argv("gw", "sbx", "tok", **kwargs)  # type: ignore[arg-type]
        return argv[argv.index("ssh-proxy") + 1 : argv.index("--gateway=gw")]

    assert options() == []
    assert options(resume_timeout=120) == []
    assert options(resume_timeout=7.5) == ["--resume-timeout=7.5"]
    assert options(resume=False, resume_timeout=7.5) == ["--no-resume"]


def alive_settings(argv: list[str]) -> tuple[int, int]:
    options = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-o")
    return int(options["ServerAliveInterval"]), int(options["ServerAliveCountMax"])


def test_ssh_keepalive_outlasts_the_resume_timeout_but_stays_bounded(tmp_path: Path) -> None:
    _, public = generate_ssh_host_key()

    def settings(**kwargs: object) -> tuple[int, int]:
        argv = ssh_command(
            "gw", "sbx", "tok", public, tmp_path / "id", known_hosts_file=tmp_path / "kh",
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        return alive_settings(argv)

    assert settings(resume=False) == (10, 3)  # a plain session ends 30 s into a stall
    for timeout in (3.0, 120.0, 600.0):
        interval, count = settings(resume_timeout=timeout)
        assert timeout + 5 < interval * count <= timeout + 60


@pytest.mark.parametrize("value", ["0", "-1", "abc", "99999"])
def test_ssh_proxy_refuses_a_resume_timeout_out_of_range(value: str) -> None:
    assert main(["ssh-proxy", "--gateway", "g", "--sandbox-id", "s", "--token", "t",
                 "--resume-timeout", value]) == 2  # fmt: skip


# -- a real run of the command against a tiny CONNECT server -----------------------------------


@dataclass
class TinyGateway:
    """TLS with client certificates; answers CONNECTs with ``statuses``, then one echoed line."""

    statuses: list[int]
    requests: list[bytes] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)


def gateway_files(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """mTLS files for a gateway named ``lab`` under a fresh config home, and the server's TLS."""
    write_pki(tmp_path / "pki", generate_pki())
    config = tmp_path / "config"
    mtls = config / "openshell" / "gateways" / "lab" / "mtls"
    mtls.mkdir(parents=True)
    for source, target in (
        ("ca.crt", "ca.crt"),
        ("client.crt", "tls.crt"),
        ("client.key", "tls.key"),
    ):
        (mtls / target).write_bytes((tmp_path / "pki" / source).read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "pki/server.crt", tmp_path / "pki/server.key")
    context.load_verify_locations(tmp_path / "pki/ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    return config, context


def run_proxy_against(
    tmp_path: Path, statuses: list[int], stdin: bytes, *, resume: bool = False
) -> tuple[TinyGateway, subprocess.CompletedProcess[bytes]]:
    """Run the real ``ssh-proxy`` command against a :class:`TinyGateway` (which speaks no OSRS1:
    a resumable proxy's request is answered by a close, as a supervisor that predates it does)."""
    gateway = TinyGateway(list(statuses))
    config, context = gateway_files(tmp_path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            gateway.requests.append(head)
            gateway.peers.append(str((writer.get_extra_info("peercert") or {}).get("subject")))
            status = gateway.statuses.pop(0) if len(gateway.statuses) > 1 else gateway.statuses[0]
            writer.write(f"HTTP/1.1 {status} test\r\n\r\n".encode())
            if status == 200:
                # Answer one line, then end (as sshd ends a session): through TLS, the proxy
                # cannot say that its stdin ended, so it must wait for this close.
                line = await reader.readline()
                if not line.startswith(b"OSRS1 "):
                    writer.write(line.upper())
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def scenario() -> subprocess.CompletedProcess[bytes]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        (config / "openshell" / "gateways" / "lab" / "metadata.json").write_text(
            json.dumps({"name": "lab", "gateway_endpoint": f"https://127.0.0.1:{port}"})
        )
        async with server:
            process = await asyncio.create_subprocess_exec(
                *proxy_argv("lab", "sbx-1", "tok-1", resume=resume),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "XDG_CONFIG_HOME": str(config)},
            )
            out, err = await process.communicate(stdin)
        return subprocess.CompletedProcess([], process.returncode or 0, out, err)

    return gateway, asyncio.run(asyncio.wait_for(scenario(), 60))


def test_ssh_proxy_relays_stdin_and_stdout_through_the_tunnel(tmp_path: Path) -> None:
    gateway, result = run_proxy_against(tmp_path, [412, 200], b"hello tunnel\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"HELLO TUNNEL\n"
    assert len(gateway.requests) == 2  # one 412, retried
    assert b"X-Sandbox-Id: sbx-1\r\n" in gateway.requests[1]
    assert b"X-Sandbox-Token: tok-1\r\n" in gateway.requests[1]
    assert "openshell-client" in gateway.peers[1]  # the client certificate was presented
    assert b"retrying in 1 s" in result.stderr


def test_ssh_proxy_gives_a_sandbox_without_resumable_streams_a_plain_session(
    tmp_path: Path,
) -> None:
    gateway, result = run_proxy_against(tmp_path, [200], b"hello tunnel\n", resume=True)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"HELLO TUNNEL\n"
    assert len(gateway.requests) == 2  # the OSRS1 attempt, then a plain tunnel
    assert b"does not offer resumable sessions" in result.stderr


def test_ssh_proxy_fails_at_once_on_a_refusal(tmp_path: Path) -> None:
    gateway, result = run_proxy_against(tmp_path, [401], b"ignored")
    assert result.returncode == 1
    assert b"gateway CONNECT failed with status 401" in result.stderr
    assert result.stdout == b""
    assert len(gateway.requests) == 1


def test_ssh_proxy_starts_without_importing_the_other_commands_or_package_metadata() -> None:
    """ssh runs ssh-proxy for every connection: what it imports is paid on every ``ssh``."""
    code = (
        "import sys; from openshell_core.cli import build_parser; "
        "build_parser(light=True).parse_args(['ssh-proxy', '--gateway=g', '--sandbox-id=s', "
        "'--token=t']); "
        "print(sorted(m for m in ('docker', 'grpc', 'importlib.metadata') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_version_is_printed_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pytest-openshell ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- dialling again after a break --------------------------------------------------------------


@dataclass
class CountingTunnel:
    """A tunnel that records which way it was asked to open."""

    calls: list[str] = field(default_factory=list)
    sandbox_id: str = "sbx-1"
    token: str = "tok-1"

    async def open(self) -> Streams:
        self.calls.append("open")
        return asyncio.StreamReader(), None  # type: ignore[return-value]

    async def open_once(self) -> Streams:
        self.calls.append("open_once")
        return asyncio.StreamReader(), None  # type: ignore[return-value]


def test_a_resume_dials_one_attempt_at_a_time_not_with_the_412_schedule() -> None:
    """The first tunnel may wait out 412s (1, 2, 4, 8 s); a resume has its own finer backoff,
    and a dial that slept out a 412 schedule would wait long after the sandbox is back."""
    tunnel = CountingTunnel()

    class DialsThrice:
        async def run(self, local: Streams, dial: Dialer) -> None:
            for _ in range(3):
                await dial()

    async def scenario() -> None:
        local = (asyncio.StreamReader(), None)
        await run_proxy(tunnel, relay_with=DialsThrice(), local=local)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert tunnel.calls == ["open", "open_once", "open_once"]


def forward_tunnel(tmp_path: Path, *, connect_timeout: float = 5) -> ForwardTunnel:
    """A ForwardTcp tunnel with a fresh PKI under ``tmp_path`` to a free port on 127.0.0.1."""
    write_pki(tmp_path / "pki", generate_pki())
    pki = tmp_path / "pki"
    return ForwardTunnel(
        GatewayTunnel(
            host="127.0.0.1",
            port=free_port(),
            sandbox_id="sbx-1",
            token="tok-1",
            ca=pki / "ca.crt",
            cert=pki / "client.crt",
            key=pki / "client.key",
            connect_timeout=connect_timeout,
        )
    )


def test_a_forward_tunnel_reaches_a_gateway_that_came_back_without_grpcs_reconnect_backoff(
    tmp_path: Path,
) -> None:
    """After an attempt that found no gateway, the next one (the gateway is back) is answered at
    once, not after gRPC's own reconnect backoff (1 s growing 1.6 times: a held session stalled
    up to 20 s after a gateway restart)."""
    tunnel = forward_tunnel(tmp_path)
    pki = tunnel.tunnel.ca.parent

    class NotReady(Servicer):  # type: ignore[misc]
        async def ForwardTcp(self, requests: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sandbox is not ready")
            yield  # pragma: no cover

    async def scenario() -> tuple[Attempt, Attempt, float]:
        nobody = await tunnel.attempt()
        server = grpc.aio.server()
        add_servicer_to_server(NotReady(), server)
        credentials = grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
            root_certificates=(pki / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{tunnel.tunnel.port}", credentials)
        await server.start()
        try:
            started = time.monotonic()
            answered = await tunnel.attempt()
            return nobody, answered, time.monotonic() - started
        finally:
            await server.stop(grace=None)

    nobody, answered, took = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert nobody.status in (0, 502)
    assert (answered.status, answered.reason) == (412, "sandbox is not ready")
    assert took < 5


def test_a_forward_stream_opened_after_a_refused_one_carries_bytes_both_ways(
    tmp_path: Path,
) -> None:
    """A refused ForwardTcp (a sandbox not Ready yet, as while a gateway comes back) must leave
    nothing behind that deafens the next stream: a resumed session waited 15 s for a reply that
    had arrived."""
    tunnel = forward_tunnel(tmp_path)
    pki = tunnel.tunnel.ca.parent
    refusals = [2]

    class EchoWhenReady(Servicer):  # type: ignore[misc]
        async def ForwardTcp(self, requests: Any, context: Any) -> Any:
            frames = aiter(requests)
            await anext(frames)  # the init
            if refusals[0] > 0:
                refusals[0] -= 1
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sandbox is not ready")
            await context.send_initial_metadata(((contract.FORWARD_OPEN_METADATA, "1"),))
            async for frame in frames:
                yield pb.TcpForwardFrame(data=frame.data.upper())

    async def scenario() -> tuple[list[int], bytes]:
        server = grpc.aio.server()
        add_servicer_to_server(EchoWhenReady(), server)
        credentials = grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
            root_certificates=(pki / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{tunnel.tunnel.port}", credentials)
        await server.start()
        try:
            statuses = []
            for _ in range(3):
                result = await tunnel.attempt()
                statuses.append(result.status)
            assert result.streams is not None
            reader, writer = result.streams
            writer.write(b"are you there?\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            return statuses, answer
        finally:
            await server.stop(grace=None)

    statuses, answer = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert statuses == [412, 412, 200]
    assert answer == b"ARE YOU THERE?\n"


# -- what a refused ForwardTcp leaves behind ------------------------------------------------------

#: Background tasks of an abandoned attempt get this long to end (they need no peer to).
SETTLE = 5.0


class _NotReadyThreaded(Servicer):  # type: ignore[misc]
    """A gateway whose sandbox is never Ready: it reads the init frame, then refuses (a
    threaded server, so the client's event loop holds the client's tasks alone)."""

    def ForwardTcp(self, frames: Any, context: grpc.ServicerContext) -> Any:
        next(frames)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sandbox is not ready")
        yield from ()


def test_a_refused_forward_attempt_leaves_no_task_behind(tmp_path: Path) -> None:
    """A task left pending is a leak, and asyncio prints it over the user's terminal when the
    proxy ends ("Task was destroyed but it is pending!")."""
    tunnel = forward_tunnel(tmp_path, connect_timeout=0.5)
    pki = tunnel.tunnel.ca.parent
    server = grpc.server(ThreadPoolExecutor(2))
    add_servicer_to_server(_NotReadyThreaded(), server)
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{tunnel.tunnel.port}", credentials)
    server.start()

    async def attempts() -> set[asyncio.Task[Any]]:
        statuses = [(await tunnel.attempt()).status for _ in range(3)]
        assert statuses == [412] * 3
        left = asyncio.all_tasks() - {asyncio.current_task()}
        if not left:
            return set()
        _, pending = await asyncio.wait(left, timeout=SETTLE)
        return pending  # type: ignore[return-value]

    try:
        pending = asyncio.run(attempts())
    finally:
        server.stop(None)
    assert not pending, f"tasks still pending after the attempts ended: {pending}"


def test_a_forward_attempt_without_the_mtls_files_says_so_and_leaves_the_tunnel_usable(
    tmp_path: Path,
) -> None:
    """The auto-bootstrap scenario deletes the host's files while a session is held: the resume
    must see a problem it retries (as over CONNECT), not crash ssh-proxy on a missing file."""
    tunnel = forward_tunnel(tmp_path, connect_timeout=0.5)
    ca = tunnel.tunnel.ca
    kept = ca.read_bytes()
    ca.unlink()

    async def attempts() -> tuple[OpenShellError, int]:
        with pytest.raises(OpenShellError) as missing:
            await tunnel.attempt()
        ca.write_bytes(kept)  # written anew, as a bootstrap does
        return missing.value, (await tunnel.attempt()).status

    error, status = asyncio.run(attempts())
    assert f"cannot load the gateway's mTLS files ({ca.parent})" in error.message
    assert error.hint == "`pytest-openshell gateway start` writes them again"
    assert status in (0, 502)  # nothing listens: an ordinary refusal, the files were read
