"""The sandbox supervisor in the real sandbox image, reached with real OpenSSH.

Each sandbox container runs on a throw-away user network (the private engine has no default
bridge) and is reached from the host at its network address. ssh reaches it through a
ProxyCommand that does what the gateway does: the NSSH1 preface, then a plain relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.images import ImageSet
from openshell_core.pki import generate_ssh_host_key, ssh_fingerprint, ssh_public_line
from openshell_core.server.sandbox_link import exec_in_sandbox
from openshell_core.wire.exec1 import ExecStream
from openshell_core.wire.nssh1 import (
    MAX_ANSWER,
    HandshakeRejected,
    generate_secret,
    make_preface,
    read_line_socket,
)

PORT = 2222
READY_TIMEOUT = 60.0

#: What the gateway does before relaying, as a ProxyCommand for ssh.
DIAL_SCRIPT = """
import asyncio, os, sys
from openshell_core.wire.nssh1 import client_handshake
from openshell_core.wire.relay import relay, stdio_streams

async def main(host, port):
    reader, writer = await asyncio.open_connection(host, int(port))
    await client_handshake(reader, writer, os.environ["TEST_NSSH_SECRET"], "test-token")
    local_reader, local_writer = await stdio_streams()
    await relay(local_reader, local_writer, reader, writer)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@dataclass
class Sandbox:
    name: str
    address: str
    secret: str
    host_public_key: str
    env: dict[str, str] = field(repr=False)


@dataclass
class Lab:
    """Sandboxes on one network, and an ssh client set up to reach them."""

    engine: Engine
    image: str
    network: str
    workdir: Path
    user_key: Path
    made: list[str] = field(default_factory=list)

    def sandbox_env(
        self, *, secret: str | None = None, host_key: str | None = None
    ) -> dict[str, str]:
        private, _ = generate_ssh_host_key() if host_key is None else (host_key, "")
        return {
            "OPENSHELL_SANDBOX_ID": "sbx-test",
            "OPENSHELL_SANDBOX": "test",
            "OPENSHELL_SSH_HANDSHAKE_SECRET": secret or generate_secret(),
            "OPENSHELL_SSH_HANDSHAKE_SKEW_SECS": "300",
            "OPENSHELL_SSH_LISTEN_ADDR": f"0.0.0.0:{PORT}",
            "OPENSHELL_SSH_HOST_KEY": private,
            "OPENSHELL_SSH_AUTHORIZED_KEYS": self.user_key.with_suffix(".pub").read_text(),
            "MY_SETTING": "from-the-request",
        }

    def create(self, env: dict[str, str], *, wait: bool = True) -> Sandbox:
        name = f"openshell-test-sbx-{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        self.engine.create_container(
            name=name,
            image=self.image,
            environment=env,
            labels=labels.ownership(role="test"),
            network=self.network,
            init=True,
        )
        self.engine.start_container(name)
        info = self.engine.inspect_container(name) or {}
        address = info["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        key = env.get("OPENSHELL_SSH_HOST_KEY", "")
        sandbox = Sandbox(
            name=name,
            address=address,
            secret=env.get("OPENSHELL_SSH_HANDSHAKE_SECRET", ""),
            host_public_key=ssh_public_line(key) if key else "",
            env=env,
        )
        if wait:
            self.wait_listening(sandbox)
        return sandbox

    def wait_listening(self, sandbox: Sandbox) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                socket.create_connection((sandbox.address, PORT), timeout=1).close()
                return
            except OSError:
                state = (self.engine.inspect_container(sandbox.name) or {}).get("State", {})
                if not state.get("Running") or time.monotonic() > deadline:
                    logs = "\n".join(self.engine.container_logs(sandbox.name, tail=30))
                    pytest.fail(f"supervisor in {sandbox.name} never listened:\n{logs}")
                time.sleep(0.1)

    def ssh(
        self,
        sandbox: Sandbox,
        *remote: str,
        input: bytes | None = None,
        known_key: str | None = None,
        identity: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ssh with strict host key checking against ``known_key`` (default: the env's)."""
        known_hosts = self.workdir / f"known_hosts-{uuid.uuid4().hex[:8]}"
        key = (known_key or sandbox.host_public_key).split()
        known_hosts.write_text(f"sandbox-under-test {key[0]} {key[1]}\n")
        dial = self.workdir / "dial.py"
        dial.write_text(DIAL_SCRIPT)
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(identity or self.user_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ProxyCommand={sys.executable} {dial} {sandbox.address} {PORT}",
            "-o",
            "HostKeyAlias=sandbox-under-test",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "root@sandbox-under-test",
            *remote,
        ]
        env = {**os.environ, "TEST_NSSH_SECRET": sandbox.secret}
        return subprocess.run(
            argv, input=input, capture_output=True, env=env, timeout=120, check=False
        )

    def docker_exec(self, sandbox: Sandbox, script: str) -> str:
        code, output = self.engine.exec_run(sandbox.name, ["sh", "-c", script])
        assert code == 0, output
        return output.decode()

    def logs(self, sandbox: Sandbox) -> str:
        return "\n".join(self.engine.container_logs(sandbox.name, tail=200))

    def logs_once_they_show(self, sandbox: Sandbox, text: str, *, timeout: float = 10) -> str:
        """The sandbox's log once ``text`` is in it: Docker collects a container's output
        asynchronously, so a line logged a moment ago may not be readable yet."""
        deadline = time.monotonic() + timeout
        while text not in (logs := self.logs(sandbox)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return logs


@pytest.fixture(scope="module")
def lab(
    engine: Engine, images: ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("ssh-lab")
    user_key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
    network = f"openshell-test-net-{uuid.uuid4().hex[:10]}"
    engine.create_network(network, labels=labels.ownership(role="test"))
    made = Lab(engine, images.sandbox, network, workdir, user_key)
    try:
        yield made
    finally:
        for name in made.made:
            engine.remove_container(name)
        engine.remove_network(network)


@pytest.fixture(scope="module")
def sandbox(lab: Lab) -> Sandbox:
    """One sandbox most tests share (they only read, or write files of their own)."""
    return lab.create(lab.sandbox_env())


def raw_handshake(sandbox: Sandbox, preface: bytes) -> bytes:
    with socket.create_connection((sandbox.address, PORT), timeout=10) as sock:
        sock.sendall(preface)
        return read_line_socket(sock, limit=MAX_ANSWER)


def run_exec(sandbox: Sandbox, argv: list[str], **options: object) -> tuple[bytes, bytes, int]:
    async def collect() -> tuple[bytes, bytes, int]:
        out, err, code = bytearray(), bytearray(), -1
        async for event in exec_in_sandbox(
            sandbox.address,
            PORT,
            sandbox.secret,
            argv,
            **options,  # type: ignore[arg-type]
        ):
            if event.kind is ExecStream.STDOUT:
                out += event.data
            elif event.kind is ExecStream.STDERR:
                err += event.data
            else:
                code = event.exit_code if event.exit_code is not None else -1
        return bytes(out), bytes(err), code

    return asyncio.run(collect())


# -- SSH ---------------------------------------------------------------------------------------


def test_ssh_session_reads_a_file_written_into_the_workspace(lab: Lab, sandbox: Sandbox) -> None:
    lab.docker_exec(sandbox, "printf 'marker-1\\n' > /sandbox/marker-read")
    result = lab.ssh(sandbox, "cat", "/sandbox/marker-read")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"marker-1\n"


def test_ssh_session_passes_stdin_to_its_end(lab: Lab, sandbox: Sandbox) -> None:
    payload = os.urandom(200_000)
    result = lab.ssh(sandbox, "cat > /sandbox/upload && sha256sum /sandbox/upload", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()


def test_an_ssh_command_starts_in_the_workspace(lab: Lab, sandbox: Sandbox) -> None:
    result = lab.ssh(sandbox, "pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"/sandbox\n"


def test_an_ssh_shell_session_starts_in_the_workspace(lab: Lab, sandbox: Sandbox) -> None:
    # No command: sshd starts the user's login shell, which reads this from its input.
    result = lab.ssh(sandbox, input=b"pwd; echo HOME=$HOME\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [b"/sandbox", b"HOME=/sandbox"]


def test_ssh_session_returns_the_remote_exit_code(lab: Lab, sandbox: Sandbox) -> None:
    assert lab.ssh(sandbox, "exit 7").returncode == 7


def test_ssh_presents_the_host_key_from_the_environment(lab: Lab, sandbox: Sandbox) -> None:
    # StrictHostKeyChecking=yes with only that key known: success proves the key is the one.
    assert lab.ssh(sandbox, "true").returncode == 0
    fingerprint = lab.docker_exec(sandbox, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key")
    assert fingerprint.split()[1] == ssh_fingerprint(sandbox.host_public_key)


def test_ssh_refuses_a_sandbox_whose_host_key_changed(lab: Lab, sandbox: Sandbox) -> None:
    _, other = generate_ssh_host_key()
    result = lab.ssh(sandbox, "true", known_key=other)
    assert result.returncode == 255
    assert b"Host key verification failed" in result.stderr


def test_recreated_sandbox_with_the_same_env_presents_the_same_host_key(lab: Lab) -> None:
    env = lab.sandbox_env()
    first = lab.create(env)
    assert lab.ssh(first, "true").returncode == 0
    lab.engine.remove_container(first.name)
    second = lab.create(env)
    result = lab.ssh(second, "true", known_key=first.host_public_key)
    assert result.returncode == 0, result.stderr


def test_ssh_refuses_a_key_that_is_not_authorized(lab: Lab, sandbox: Sandbox) -> None:
    stranger = lab.workdir / "stranger"
    if not stranger.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True
        )
    result = lab.ssh(sandbox, "true", identity=stranger)
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


def test_sshd_allows_keys_only(lab: Lab, sandbox: Sandbox) -> None:
    settings = lab.docker_exec(sandbox, "sshd -T -f /etc/openshell/ssh/sshd_config")
    lines = set(settings.splitlines())
    assert "passwordauthentication no" in lines
    assert "kbdinteractiveauthentication no" in lines
    assert "usepam no" in lines
    assert "permitrootlogin without-password" in lines
    assert "hostkey /etc/ssh/ssh_host_ed25519_key" in lines


def test_host_key_and_authorized_keys_are_root_owned_and_private(
    lab: Lab, sandbox: Sandbox
) -> None:
    modes = lab.docker_exec(
        sandbox,
        "stat -c '%a %U' /etc/ssh/ssh_host_ed25519_key /etc/openshell/ssh/authorized_keys",
    )
    assert modes.split("\n")[:2] == ["600 root", "644 root"]


# -- the handshake -----------------------------------------------------------------------------


def test_good_preface_is_answered_ok(sandbox: Sandbox) -> None:
    assert raw_handshake(sandbox, make_preface(sandbox.secret, "tok")) == b"OK\n"


def test_wrong_secret_is_answered_err_and_logged(lab: Lab, sandbox: Sandbox) -> None:
    answer = raw_handshake(sandbox, make_preface(generate_secret(), "tok"))
    assert answer == b"ERR\n"
    line = "SSH connection: handshake verification failed (signature mismatch)"
    assert line in lab.logs_once_they_show(sandbox, line)


def test_replayed_preface_is_answered_err(lab: Lab, sandbox: Sandbox) -> None:
    preface = make_preface(sandbox.secret, "tok")
    assert raw_handshake(sandbox, preface) == b"OK\n"
    assert raw_handshake(sandbox, preface) == b"ERR\n"
    line = "handshake verification failed (nonce replay)"
    assert line in lab.logs_once_they_show(sandbox, line)


def test_a_port_probe_is_not_logged_as_a_failed_handshake(lab: Lab) -> None:
    sandbox = lab.create(lab.sandbox_env())  # waiting for it probed the port already
    socket.create_connection((sandbox.address, PORT), timeout=10).close()
    assert raw_handshake(sandbox, b"not a preface\n") == b"ERR\n"
    logs = lab.logs_once_they_show(sandbox, "(malformed preface)")
    failures = [line for line in logs.splitlines() if "verification failed" in line]
    assert len(failures) == 1
    assert "(malformed preface)" in failures[0]


def test_stale_preface_is_answered_err(sandbox: Sandbox) -> None:
    stale = make_preface(sandbox.secret, "tok", now=time.time() - 301)
    assert raw_handshake(sandbox, stale) == b"ERR\n"


def test_oversized_preface_is_answered_err(sandbox: Sandbox) -> None:
    assert raw_handshake(sandbox, b"N" * 5000 + b"\n") == b"ERR\n"


# -- EXEC1 -------------------------------------------------------------------------------------


def test_exec_returns_output_and_exit_code(sandbox: Sandbox) -> None:
    out, err, code = run_exec(sandbox, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out, err, code) == (b"out\n", b"err\n", 3)


def test_exec_feeds_stdin_and_applies_env_and_workdir(sandbox: Sandbox) -> None:
    out, _, code = run_exec(
        sandbox,
        ["sh", "-c", 'printf "%s|%s|" "$PWD" "$EXTRA"; cat'],
        env={"EXTRA": "given"},
        workdir="/tmp",
        stdin=b"from-stdin",
    )
    assert (out, code) == (b"/tmp|given|from-stdin", 0)


def test_exec_runs_in_the_workspace_with_the_container_env(sandbox: Sandbox) -> None:
    out, _, _ = run_exec(sandbox, ["sh", "-c", 'echo "$PWD $MY_SETTING"'])
    assert out == b"/sandbox from-the-request\n"


def test_exec_children_never_see_the_secrets(sandbox: Sandbox) -> None:
    out, _, code = run_exec(sandbox, ["env"])
    assert code == 0
    assert b"OPENSHELL_SANDBOX_ID=sbx-test" in out
    assert b"OPENSHELL_SSH_HANDSHAKE_SECRET" not in out
    assert b"OPENSHELL_SSH_HOST_KEY" not in out


def test_exec_of_a_missing_program_exits_127(sandbox: Sandbox) -> None:
    _, err, code = run_exec(sandbox, ["no-such-program"])
    assert code == 127
    assert b"no-such-program" in err


def test_exec_killed_by_a_signal_reports_128_plus_the_signal(sandbox: Sandbox) -> None:
    _, _, code = run_exec(sandbox, ["sh", "-c", "kill -TERM $$"])
    assert code == 143


def test_exec_with_a_rejected_preface_raises(sandbox: Sandbox) -> None:
    wrong = Sandbox(sandbox.name, sandbox.address, generate_secret(), "", {})
    with pytest.raises(HandshakeRejected):
        run_exec(wrong, ["true"])


# -- lifecycle ---------------------------------------------------------------------------------


def test_sigterm_stops_the_supervisor_with_exit_code_zero(lab: Lab) -> None:
    sandbox = lab.create(lab.sandbox_env())
    # A live session must not hold the stop up.
    holder = socket.create_connection((sandbox.address, PORT), timeout=10)
    with holder:
        holder.sendall(make_preface(sandbox.secret, "tok"))
        assert read_line_socket(holder, limit=MAX_ANSWER) == b"OK\n"
        lab.engine.stop_container(sandbox.name, timeout=20)
    state = (lab.engine.inspect_container(sandbox.name) or {})["State"]
    assert state["ExitCode"] == 0, lab.logs(sandbox)
    assert "stopping" in lab.logs(sandbox)


def test_missing_secret_stops_the_supervisor_with_the_reason(lab: Lab) -> None:
    env = lab.sandbox_env()
    del env["OPENSHELL_SSH_HANDSHAKE_SECRET"]
    sandbox = lab.create(env, wait=False)
    assert lab.engine.wait_container(sandbox.name, timeout=60) == 2
    assert "OPENSHELL_SSH_HANDSHAKE_SECRET is required" in lab.logs(sandbox)


# -- the sandbox's own command -----------------------------------------------------------------

#: Appends a line to a log in the workspace at each start, then keeps running (as a workload).
STARTS_COMMAND = '["sh", "-c", "echo \\"start $PWD\\" >> /sandbox/starts.log; exec sleep 86400"]'


def starts_logged(lab: Lab, sandbox: Sandbox, count: int, *, timeout: float = 30) -> list[str]:
    """The lines of the command's log once it has ``count`` of them (fails at the deadline, or at
    once when the container stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = lab.docker_exec(sandbox, "cat /sandbox/starts.log 2>/dev/null || true").split("\n")
        lines = [line for line in lines if line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_the_sandboxs_command_runs_in_the_workspace_at_every_start(lab: Lab) -> None:
    sandbox = lab.create({**lab.sandbox_env(), "OPENSHELL_SANDBOX_COMMAND": STARTS_COMMAND})
    assert starts_logged(lab, sandbox, 1) == ["start /sandbox"], lab.logs(sandbox)

    lab.engine.stop_container(sandbox.name, timeout=20)
    lab.engine.start_container(sandbox.name)
    lab.wait_listening(sandbox)

    assert starts_logged(lab, sandbox, 2) == ["start /sandbox", "start /sandbox"], lab.logs(sandbox)


def test_the_sandboxs_command_is_ended_when_the_supervisor_stops(lab: Lab) -> None:
    sandbox = lab.create({**lab.sandbox_env(), "OPENSHELL_SANDBOX_COMMAND": STARTS_COMMAND})
    assert starts_logged(lab, sandbox, 1), lab.logs(sandbox)

    lab.engine.stop_container(sandbox.name, timeout=20)

    state = (lab.engine.inspect_container(sandbox.name) or {})["State"]
    assert state["ExitCode"] == 0, lab.logs(sandbox)
    assert "the sandbox's command 'sh' exited" in lab.logs_once_they_show(sandbox, "exited")


def test_a_command_that_is_not_a_json_list_stops_the_supervisor_with_the_reason(lab: Lab) -> None:
    sandbox = lab.create({**lab.sandbox_env(), "OPENSHELL_SANDBOX_COMMAND": "sleep 1"}, wait=False)
    assert lab.engine.wait_container(sandbox.name, timeout=60) == 2
    assert "OPENSHELL_SANDBOX_COMMAND must be a non-empty JSON list of strings" in lab.logs(sandbox)
