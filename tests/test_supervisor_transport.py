"""The ``supervisor`` transport of the reference gateway, on a real engine with the real images.

Each sandbox's supervisor dials out to the gateway (mutual TLS, its sandbox token), holds a
session with heartbeats, and serves every relay the gateway asks for: SSH, exec and the official
SDK go through those relays. The sandbox-token key is made once and kept on the volume; the
transport is chosen at the first deploy and kept there too.

One gateway is shared by the tests of this module, in file order; the last ones disrupt it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from openshell import SandboxClient
from server_support import GatewayUnderTest, lab_run, wait_for

from openshell_core.cli import main
from openshell_core.engine import Engine
from openshell_core.errors import StateError
from openshell_core.gateway import detect_state
from openshell_core.grpc_api import pb, stub, workspace_selector
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.sshproxy.ssh_command import proxy_argv
from openshell_core.images import ImageSet
from openshell_core.sandbox.dialout import token_expiry
from openshell_core.server.compute_docker import container_name
from openshell_core.server.sandbox_tokens import TokenSigner, bearer
from openshell_core.wire import contract

WORKSPACE = "default"
KEY_FILE = contract.SANDBOX_TOKEN_KEY_FILE


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


@pytest.fixture(scope="module")
def gateway(engine: Engine, images: ImageSet, config_home: Path) -> Iterator[GatewayUnderTest]:
    with lab_run(engine) as run_id:
        lab = GatewayUnderTest(
            engine, f"sup{run_id[:8]}", run_id, config_home, transport=contract.TRANSPORT_SUPERVISOR
        )
        lab.deploy()
        lab.transport = None  # later starts keep the recorded transport
        yield lab


@pytest.fixture
def sdk_env(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)


@pytest.fixture
def client(gateway: GatewayUnderTest) -> Iterator[GatewayClient]:
    with gateway.client() as made:
        yield made


@pytest.fixture
def raw(gateway: GatewayUnderTest) -> Iterator[Any]:
    """A plain gRPC stub on the gateway's port (mutual TLS with the host's client files)."""
    credentials = _mtls_credentials(gateway)
    with grpc.secure_channel(f"127.0.0.1:{gateway.port}", credentials) as channel:
        yield stub(channel)


def _mtls_credentials(gateway: GatewayUnderTest) -> grpc.ChannelCredentials:
    """Mutual TLS with the host's client files of ``gateway``."""
    mtls = gateway.gateway_dir / "mtls"
    return grpc.ssl_channel_credentials(
        root_certificates=(mtls / "ca.crt").read_bytes(),
        private_key=(mtls / "tls.key").read_bytes(),
        certificate_chain=(mtls / "tls.crt").read_bytes(),
    )


def _ready(client: GatewayClient, name: str) -> str:
    client.create_sandbox(name)
    return client.wait_ready(name, timeout=120).id


def _sandbox_env(gateway: GatewayUnderTest, sandbox_id: str) -> dict[str, str]:
    found = gateway.engine.inspect_container(container_name(sandbox_id))
    assert found is not None
    pairs = (item.partition("=") for item in found["Config"]["Env"])
    return {key: value for key, _, value in pairs}


def _session_record(gateway: GatewayUnderTest, sandbox_id: str) -> dict[str, Any] | None:
    code = (
        "import sqlite3, sys; c = sqlite3.connect('/var/lib/openshell/openshell.db'); "
        f"r = c.execute(\"SELECT value FROM meta WHERE key = 'supervisor-session:{sandbox_id}'\")"
        ".fetchone(); print(r[0] if r else 'null')"
    )
    found: dict[str, Any] | None = json.loads(gateway.python(code).strip())
    return found


def _digest(gateway: GatewayUnderTest) -> str:
    return hashlib.sha256(gateway.read(KEY_FILE)).hexdigest()


# -- the gateway's choice and its key ---------------------------------------------------------


def test_the_volume_records_the_transport_chosen_at_the_first_deploy(gateway):
    assert json.loads(gateway.read(contract.VOLUME_RECORD_FILE))["transport"] == "supervisor"


def test_gateway_status_says_which_transport_the_gateway_speaks(gateway, capfd):
    assert detect_state(gateway.engine, gateway.name).transport == "supervisor"
    assert main(["gateway", "status", "--name", gateway.name, "--engine", "private"]) == 0
    assert "  transport: supervisor\n" in capfd.readouterr().out


def test_the_sandbox_token_key_is_kept_on_the_volume_readable_by_its_owner_only(gateway):
    mode = gateway.python(
        f"import os; print(oct(os.stat('/var/lib/openshell/{KEY_FILE}').st_mode & 0o777))"
    )
    assert mode.strip() == "0o600"
    assert len(gateway.read(KEY_FILE).strip()) == 64


# -- sandboxes through relays -----------------------------------------------------------------


def test_the_official_sdk_drives_a_sandbox_through_its_lifecycle(gateway, sdk_env):
    with SandboxClient.from_active_cluster() as sdk:
        created = sdk.create(workspace=WORKSPACE, name="sdk-relayed")
        sdk.wait_ready("sdk-relayed", workspace=WORKSPACE, timeout_seconds=120)
        result = sdk.exec(
            "sdk-relayed", ["sh", "-c", "echo out; echo err >&2; exit 3"], workspace=WORKSPACE
        )
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        sdk.stop("sdk-relayed", workspace=WORKSPACE)
        sdk.wait_stopped("sdk-relayed", workspace=WORKSPACE, timeout_seconds=60)
        sdk.start("sdk-relayed", workspace=WORKSPACE)
        again = sdk.wait_ready("sdk-relayed", workspace=WORKSPACE, timeout_seconds=120)
        assert again.id == created.id
        assert sdk.exec("sdk-relayed", ["true"], workspace=WORKSPACE).exit_code == 0
        sdk.delete("sdk-relayed", workspace=WORKSPACE)
        sdk.wait_deleted("sdk-relayed", workspace=WORKSPACE, timeout_seconds=60)


def test_the_supervisor_dials_out_and_listens_on_no_port(gateway, client):
    sandbox_id = _ready(client, "dialer")
    env = _sandbox_env(gateway, sandbox_id)
    assert env[contract.TRANSPORT_ENV] == "supervisor"
    assert env[contract.GATEWAY_ENDPOINT_ENV] == f"openshell-cluster-{gateway.name}:30051"
    listening = client.exec("dialer", ["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6"]).stdout
    # state 0A is LISTEN; 08AE is port 2222
    assert not [
        line for line in listening.decode().splitlines() if ":08AE" in line and " 0A " in line
    ]


def test_sandbox_connect_reaches_sshd_through_forward_tcp_and_a_relay(gateway, sdk_env, capfd):
    assert main(["-q", "sandbox", "create", "ssh-relayed"]) == 0
    capfd.readouterr()
    assert main(["-q", "sandbox", "connect", "ssh-relayed", "--", "cat", "README.md"]) == 0
    assert capfd.readouterr().out == "Welcome to an OpenShell sandbox.\n"
    logs = "\n".join(gateway.logs(tail=300))
    # ssh-proxy learnt from the gateway that it speaks supervisor: ForwardTcp, never CONNECT
    assert "ForwardTcp to sandbox" in logs
    assert "SSH tunnel to sandbox" not in logs


def test_ssh_proxy_through_forward_tcp_fails_at_once_on_a_refused_token(gateway, client):
    sandbox_id = _ready(client, "refusing")
    token = client.create_ssh_session("refusing").token
    client.revoke_ssh_session(token)
    result = subprocess.run(
        proxy_argv(gateway.name, sandbox_id, token),
        input=b"",
        capture_output=True,
        timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": str(gateway.config_home)},
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert (
        b"gateway CONNECT failed with status 401 (session token revoked or expired)"
        in result.stderr
    )


def test_ready_follows_the_supervisor_session_and_a_returning_supervisor_replaces_it(
    gateway, client
):
    sandbox_id = _ready(client, "frozen")
    before = wait_for(lambda: _session_record(gateway, sandbox_id), what="a session record")
    container = container_name(sandbox_id)
    gateway.engine.api.pause(container)
    try:
        wait_for(
            lambda: any(
                f"supervisor session {before['session_id']} silent" in line
                for line in gateway.logs(tail=100)
            ),
            timeout=30,
            what="the gateway to drop the silent supervisor's session",
        )
        assert client.get_sandbox("frozen").phase == "PROVISIONING"
    finally:
        gateway.engine.api.unpause(container)
    client.wait_ready("frozen", timeout=60)
    after = _session_record(gateway, sandbox_id)
    assert after is not None
    # (the paused runtime may have been restarted meanwhile: a new instance, or a new epoch)
    assert (after["instance_id"], after["epoch"]) != (before["instance_id"], before["epoch"])
    assert after["session_id"] != before["session_id"]
    assert client.exec("frozen", ["true"]).exit_code == 0


# -- who may use the supervisor-side calls ----------------------------------------------------


def _hello(sandbox_id: str) -> Iterator[pb.SupervisorMessage]:
    yield pb.SupervisorMessage(
        hello=pb.SupervisorHello(sandbox_id=sandbox_id, instance_id="test", connection_epoch=1)
    )


def _refusal(call: Iterator[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        for _ in call:
            pass
    code: grpc.StatusCode = refused.value.code()
    return code


def test_a_supervisor_session_without_a_token_is_refused(gateway, raw):
    call = raw.ConnectSupervisor(_hello("anything"), timeout=20)
    assert _refusal(call) is grpc.StatusCode.UNAUTHENTICATED


def test_a_token_not_signed_by_the_gateway_is_refused_and_not_logged(gateway, client, raw):
    sandbox_id = _ready(client, "forged")
    forged = TokenSigner(b"k" * 32).issue(sandbox_id).token
    call = raw.ConnectSupervisor(
        _hello(sandbox_id), metadata=(("authorization", bearer(forged)),), timeout=20
    )
    assert _refusal(call) is grpc.StatusCode.UNAUTHENTICATED
    logs = _logged(gateway, "sandbox token not signed by this gateway", tail=1000)
    assert forged not in logs


def test_a_token_of_one_sandbox_cannot_hold_another_sandboxs_session(gateway, client, raw):
    token = _sandbox_env(gateway, _ready(client, "owner"))[contract.SANDBOX_TOKEN_ENV]
    other = _ready(client, "bystander")
    call = raw.ConnectSupervisor(
        _hello(other), metadata=(("authorization", bearer(token)),), timeout=20
    )
    assert _refusal(call) is grpc.StatusCode.PERMISSION_DENIED
    assert client.exec("bystander", ["true"]).exit_code == 0  # its own session is untouched


def test_a_supervisor_cannot_open_a_relay_nobody_asked_for(gateway, client, raw):
    token = _sandbox_env(gateway, _ready(client, "uninvited"))[contract.SANDBOX_TOKEN_ENV]
    frames = iter([pb.RelayFrame(init=pb.RelayInit(channel_id="0" * 32))])
    call = raw.RelayStream(frames, metadata=(("authorization", bearer(token)),), timeout=20)
    assert _refusal(call) is grpc.StatusCode.PERMISSION_DENIED


def test_a_sandbox_token_is_renewed_for_its_own_sandbox_only(gateway, client, raw):
    sandbox_id = _ready(client, "renewer")
    token = _sandbox_env(gateway, sandbox_id)[contract.SANDBOX_TOKEN_ENV]
    renewed = raw.RefreshSandboxToken(
        pb.RefreshSandboxTokenRequest(), metadata=(("authorization", bearer(token)),), timeout=20
    )
    assert renewed.sandbox_token and renewed.sandbox_token != token
    assert not renewed.HasField("sandbox_expiration_time")  # the local default: no expiry
    with pytest.raises(grpc.RpcError) as refused:
        raw.RefreshSandboxToken(pb.RefreshSandboxTokenRequest(), timeout=20)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


# -- ForwardTcp: the client's way in ------------------------------------------------------------


def _init(name: str, token: str, *, tcp: tuple[str, int] | None = None) -> pb.TcpForwardFrame:
    init = pb.TcpForwardInit(sandbox=name, workspace=WORKSPACE, authorization_token=token)
    if tcp is None:
        init.ssh.SetInParent()
    else:
        init.tcp.host, init.tcp.port = tcp
    return pb.TcpForwardFrame(init=init)


def _logged(gateway: GatewayUnderTest, text: str, *, tail: int) -> str:
    """The gateway's last ``tail`` log lines once one holds ``text``. A refusal is logged before
    it is sent, but the engine's log may show the line a little later."""
    return wait_for(
        lambda: "\n".join(lines := gateway.logs(tail=tail)) * any(text in line for line in lines),
        timeout=10,
        what=f"{text!r} in the gateway's log",
    )


def _forward_refusal(raw: Any, frame: pb.TcpForwardFrame) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        for _ in raw.ForwardTcp(iter([frame]), timeout=20):
            pass
    return refused.value.code(), refused.value.details()


def test_forward_tcp_carries_bytes_to_the_sandboxs_ssh_server(gateway, client, raw):
    _ready(client, "forwarded")
    token = client.create_ssh_session("forwarded").token
    done = threading.Event()

    def frames() -> Iterator[pb.TcpForwardFrame]:
        yield _init("forwarded", token)
        # an SSH client speaks first (its banner chooses the supervisor's SSH mode)
        yield pb.TcpForwardFrame(data=b"SSH-2.0-conformance\r\n")
        done.wait(60)  # the client's half stays open until the banner came

    received = b""
    call = raw.ForwardTcp(frames(), timeout=60)
    try:
        for frame in call:
            received += frame.data
            if b"\n" in received:
                break
    finally:
        done.set()
        call.cancel()
    assert received.startswith(b"SSH-2.0-OpenSSH")


def test_forward_tcp_without_a_token_is_refused(gateway, client, raw):
    _ready(client, "tokenless")
    assert _forward_refusal(raw, _init("tokenless", "")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "no authorization token",
    )


def test_forward_tcp_with_another_sandboxs_token_is_refused(gateway, client, raw):
    _ready(client, "mine")
    _ready(client, "theirs")
    token = client.create_ssh_session("theirs").token
    assert _forward_refusal(raw, _init("mine", token)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "session token is for another sandbox",
    )


def test_forward_tcp_with_a_revoked_token_is_refused_and_the_token_is_not_logged(
    gateway, client, raw
):
    _ready(client, "revoked")
    token = client.create_ssh_session("revoked").token
    client.revoke_ssh_session(token)
    assert _forward_refusal(raw, _init("revoked", token)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "session token revoked or expired",
    )
    logs = _logged(gateway, "ForwardTcp to sandbox 'revoked' from", tail=200)
    assert token not in logs


def test_forward_tcp_reaches_a_loopback_port_in_the_sandbox(gateway, client, raw):
    _ready(client, "serving")
    serve = "setsid -f python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1"
    assert client.exec("serving", ["sh", "-c", serve]).exit_code == 0
    probe = "import socket; socket.create_connection(('127.0.0.1', 8765), 1).close()"
    wait_for(
        lambda: client.exec("serving", ["python3", "-c", probe]).exit_code == 0,
        timeout=30,
        what="the server in the sandbox",
    )
    token = client.create_ssh_session("serving").token
    frames = iter(
        [
            _init("serving", token, tcp=("127.0.0.1", 8765)),
            pb.TcpForwardFrame(data=b"GET / HTTP/1.0\r\n\r\n"),
        ]
    )
    received = b"".join(frame.data for frame in raw.ForwardTcp(frames, timeout=60))
    assert received.startswith(b"HTTP/1.0 200")


def test_forward_tcp_to_a_tcp_target_off_the_loopback_is_refused(gateway, client, raw):
    _ready(client, "loopback-only")
    token = client.create_ssh_session("loopback-only").token
    for host in ("10.0.0.1", "openshell-cluster-x", "0.0.0.0"):
        assert _forward_refusal(raw, _init("loopback-only", token, tcp=(host, 22))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "target.tcp must be a loopback address and port in the sandbox",
        )


def _api_session(raw: Any, name: str) -> tuple[str, str]:
    """The SupervisorSession condition of a sandbox through the API: (status, message)."""
    request = pb.GetSandboxRequest(name=name, workspace_scope=workspace_selector(WORKSPACE))
    sandbox = raw.GetSandbox(request, timeout=20).sandbox
    found = [c for c in sandbox.status.conditions if c.type == "SupervisorSession"]
    assert len(found) == 1, sandbox.status.conditions
    return found[0].status, found[0].message


def test_the_api_says_which_supervisor_session_a_sandbox_is_on(gateway, client, raw):
    sandbox_id = _ready(client, "observed")
    record = wait_for(lambda: _session_record(gateway, sandbox_id), what="a session record")
    assert _api_session(raw, "observed") == (
        "True",
        f"session {record['session_id']} instance {record['instance_id']} epoch {record['epoch']}",
    )


# -- what survives ------------------------------------------------------------------------------


def test_a_killed_gateway_keeps_its_key_and_supervisors_come_back_with_a_new_epoch(
    gateway, client, raw
):
    sandbox_id = _ready(client, "returning")
    digest = _digest(gateway)
    before = wait_for(lambda: _session_record(gateway, sandbox_id), what="a session record")

    gateway.kill()
    gateway.start()

    with gateway.client() as after:
        after.wait_ready("returning", timeout=120)
        assert after.exec("returning", ["true"]).exit_code == 0
    record = _session_record(gateway, sandbox_id)
    assert record is not None
    assert record["instance_id"] == before["instance_id"]  # the same supervisor process ...
    assert record["epoch"] > before["epoch"]  # ... on a new connection
    status, message = _api_session(raw, "returning")  # observable through the API
    assert (status, message.split()[-1]) == ("True", str(record["epoch"]))
    assert _digest(gateway) == digest
    assert json.loads(gateway.read(contract.VOLUME_RECORD_FILE))["transport"] == "supervisor"


def test_the_official_sdk_drives_a_sandbox_it_made_before_docker_kill_and_gateway_start(
    gateway, sdk_env
):
    with SandboxClient.from_active_cluster() as sdk:
        created = sdk.create(workspace=WORKSPACE, name="sdk-survivor")
        sdk.wait_ready("sdk-survivor", workspace=WORKSPACE, timeout_seconds=120)
        sdk.exec("sdk-survivor", ["sh", "-c", "echo kept > note"], workspace=WORKSPACE)

    gateway.kill()
    gateway.start()

    # A new client, as a user's next command would make: it reads the same host files.
    with SandboxClient.from_active_cluster() as sdk:
        again = sdk.wait_ready("sdk-survivor", workspace=WORKSPACE, timeout_seconds=120)
        assert again.id == created.id
        result = sdk.exec("sdk-survivor", ["cat", "note"], workspace=WORKSPACE)
        assert (result.exit_code, result.stdout) == (0, "kept\n")
        sdk.stop("sdk-survivor", workspace=WORKSPACE)
        sdk.wait_stopped("sdk-survivor", workspace=WORKSPACE, timeout_seconds=60)
        sdk.start("sdk-survivor", workspace=WORKSPACE)
        sdk.wait_ready("sdk-survivor", workspace=WORKSPACE, timeout_seconds=120)
        assert sdk.exec("sdk-survivor", ["cat", "note"], workspace=WORKSPACE).stdout == "kept\n"
        sdk.delete("sdk-survivor", workspace=WORKSPACE)
        sdk.wait_deleted("sdk-survivor", workspace=WORKSPACE, timeout_seconds=60)


def test_a_start_asking_for_another_transport_is_refused_and_names_the_fix(gateway):
    gateway.transport = contract.TRANSPORT_NSSH1
    try:
        with pytest.raises(StateError) as refused:
            gateway.deploy()
    finally:
        gateway.transport = None
    assert refused.value.message == (
        f"gateway {gateway.name!r} speaks transport 'supervisor', chosen when it was first "
        "deployed and kept on its volume; --transport nssh1 was not applied and nothing was "
        "changed"
    )
    assert "start it without --transport" in (refused.value.hint or "")
    assert "--recreate --transport nssh1" in (refused.value.hint or "")


def test_a_stopped_gateway_started_without_the_flag_keeps_its_transport(gateway):
    gateway.engine.stop_container(gateway.container, timeout=10)
    gateway.transport = contract.TRANSPORT_NSSH1
    try:
        with pytest.raises(StateError):
            gateway.deploy()
    finally:
        gateway.transport = None
    gateway.deploy()
    assert detect_state(gateway.engine, gateway.name).transport == "supervisor"
    with gateway.client() as after:
        after.wait_ready("returning", timeout=120)
        assert after.exec("returning", ["true"]).exit_code == 0


# -- tokens that expire -------------------------------------------------------------------------

TOKEN_TTL = 6.0


@pytest.fixture(scope="module")
def short_lived(
    engine: Engine, images: ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayUnderTest]:
    """A supervisor gateway whose sandbox tokens live :data:`TOKEN_TTL` seconds."""
    with lab_run(engine) as run_id:
        lab = GatewayUnderTest(
            engine,
            f"ttl{run_id[:8]}",
            run_id,
            tmp_path_factory.mktemp("ttl-config"),
            transport=contract.TRANSPORT_SUPERVISOR,
            sandbox_token_ttl=TOKEN_TTL,
            ssh_session_ttl=TOKEN_TTL,
        )
        lab.deploy()
        yield lab


def test_a_supervisor_renews_its_token_before_it_expires_and_keeps_its_session(short_lived):
    with short_lived.client() as client:
        sandbox_id = _ready(client, "renewing")
        created = _sandbox_env(short_lived, sandbox_id)[contract.SANDBOX_TOKEN_ENV]
        session = wait_for(lambda: _session_record(short_lived, sandbox_id), what="a session")

        def kept_token() -> str:
            return (
                client.exec("renewing", ["cat", contract.SANDBOX_TOKEN_CACHE])
                .stdout.decode()
                .strip()
            )

        first = wait_for(kept_token, timeout=30, what="a renewed token")
        # A second renewal comes after the first token's life: the created one has expired.
        wait_for(lambda: kept_token() not in ("", first), timeout=30, what="a second renewal")
        assert created not in (first, "")
        assert client.exec("renewing", ["true"]).exit_code == 0
    assert _session_record(short_lived, sandbox_id) == session  # never had to reconnect
    credentials = _mtls_credentials(short_lived)
    with (
        grpc.secure_channel(f"127.0.0.1:{short_lived.port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        stub(channel).RefreshSandboxToken(
            pb.RefreshSandboxTokenRequest(),
            metadata=(("authorization", bearer(created)),),
            timeout=20,
        )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "sandbox token expired"


def test_forward_tcp_with_an_expired_session_token_is_refused(short_lived):
    with short_lived.client() as client:
        _ready(client, "expiring")
        session = client.create_ssh_session("expiring")
        assert session.expires_at > 0
        credentials = _mtls_credentials(short_lived)
        with grpc.secure_channel(f"127.0.0.1:{short_lived.port}", credentials) as channel:
            wait_for(lambda: time.time() > session.expires_at + 0.5, what="the token's expiry")
            assert _forward_refusal(stub(channel), _init("expiring", session.token)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "session token revoked or expired",
            )


def _latest_token_expiry(gateway: GatewayUnderTest, sandbox_id: str) -> float:
    """The expiry of the token the supervisor holds now (its kept one, else the created one)."""
    code, output = gateway.engine.exec_run(
        container_name(sandbox_id), ["cat", contract.SANDBOX_TOKEN_CACHE]
    )
    token = output.decode().strip() if code == 0 else ""
    token = token or _sandbox_env(gateway, sandbox_id)[contract.SANDBOX_TOKEN_ENV]
    expiry = token_expiry(token)
    assert expiry, token[:12]
    return expiry


def test_a_gateway_down_longer_than_a_tokens_life_strands_no_supervisor(short_lived):
    with short_lived.client() as client:
        sandbox_id = _ready(client, "outlasted")
    short_lived.engine.stop_container(short_lived.container, timeout=10)
    expiry = _latest_token_expiry(short_lived, sandbox_id)
    wait_for(lambda: time.time() > expiry + 1, timeout=TOKEN_TTL * 3, what="the token's expiry")

    short_lived.deploy()

    with short_lived.client() as client:
        client.wait_ready("outlasted", timeout=120)
        assert client.exec("outlasted", ["true"]).exit_code == 0
    assert _latest_token_expiry(short_lived, sandbox_id) > expiry  # a new token was issued


def _signed_by(gateway: GatewayUnderTest) -> TokenSigner:
    """A signer with the gateway's own sandbox-token key, read from its volume (test only)."""
    text = gateway.engine.read_container_file(
        gateway.container, f"{contract.STATE_DIR}/{contract.SANDBOX_TOKEN_KEY_FILE}"
    )
    return TokenSigner(bytes.fromhex(text.decode().strip()), ttl=TOKEN_TTL)


def _exchange(gateway: GatewayUnderTest, token: str) -> tuple[grpc.StatusCode, str]:
    """``IssueSandboxToken`` with ``token``: the status and details of its answer."""
    credentials = _mtls_credentials(gateway)
    with grpc.secure_channel(f"127.0.0.1:{gateway.port}", credentials) as channel:
        try:
            stub(channel).IssueSandboxToken(
                pb.IssueSandboxTokenRequest(),
                metadata=(("authorization", bearer(token)),),
                timeout=20,
            )
        except grpc.RpcError as exc:
            return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


def test_an_expired_token_this_gateway_signed_passes_the_exchange(short_lived):
    expired = _signed_by(short_lived).issue("no-such-sandbox", now=time.time() - 60).token
    # Accepted as this gateway's (then refused only because the sandbox does not exist).
    assert _exchange(short_lived, expired) == (grpc.StatusCode.NOT_FOUND, "sandbox not found")


def test_with_token_expiry_strands_an_expired_token_is_not_exchanged(
    engine: Engine, images: ImageSet, tmp_path: Path
):
    with lab_run(engine) as run_id:
        stranding = GatewayUnderTest(
            engine,
            f"strand{run_id[:8]}",
            run_id,
            tmp_path,
            transport=contract.TRANSPORT_SUPERVISOR,
            sandbox_token_ttl=TOKEN_TTL,
            faults="token-expiry-strands",
        )
        stranding.deploy()
        expired = _signed_by(stranding).issue("no-such-sandbox", now=time.time() - 60).token
        assert _exchange(stranding, expired) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "sandbox token expired",
        )
