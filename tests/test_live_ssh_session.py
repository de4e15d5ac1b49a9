"""Live SSH sessions across gateway restarts, on a real gateway with the real images and OpenSSH.

The path is the user's: ``ssh`` with the ``sandbox connect`` command line (``ssh_command``), whose
ProxyCommand is the resumable ``ssh-proxy``, through the gateway's TLS port and tunnel to the
sandbox's supervisor and ``sshd -i``. The remote command prints ``tick N`` every 0.1 s and echoes
every stdin line as ``echo LINE`` until it reads ``quit``; the tests read its output line by line.

One gateway and one sandbox are shared by the tests of this module, in file order, once per
transport.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from server_support import GatewayUnderTest, lab_run

from openshell_core.engine import Engine
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.sshproxy.ssh_command import ssh_command
from openshell_core.images import ImageSet
from openshell_core.server.compute_docker import container_name
from openshell_core.wire.contract import TRANSPORTS
from openshell_core.wire.osrs1.lines import RESUME_TIMEOUT
from pytest_openshell.pipes import PipeReader

SANDBOX = "live"

REMOTE = r"""
import sys, threading
lock, stop = threading.Lock(), threading.Event()
def say(text):
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
def echo():
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        say("echo " + line.rstrip("\n"))
    stop.set()
threading.Thread(target=echo, daemon=True).start()
tick = 0
while not stop.is_set():
    say(f"tick {tick}")
    tick += 1
    stop.wait(0.1)
say("bye")
"""


@dataclass
class Lab:
    gateway: GatewayUnderTest
    key: Path
    workdir: Path

    def client(self) -> GatewayClient:
        return self.gateway.client()


@pytest.fixture(scope="module", params=TRANSPORTS)
def lab(
    request: pytest.FixtureRequest,
    engine: Engine,
    images: ImageSet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lab]:
    """One gateway per transport: ``nssh1`` (CONNECT tunnels) and ``supervisor`` (ForwardTcp
    and relays); the sessions are the same OSRS1 streams in both."""
    workdir = tmp_path_factory.mktemp("live-ssh")
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with lab_run(engine) as run_id:
        gateway = GatewayUnderTest(
            engine, f"live{run_id[:8]}", run_id, workdir / "config", transport=request.param
        )
        gateway.deploy()
        made = Lab(gateway, key, workdir)
        with made.client() as client:
            environment = {"OPENSHELL_SSH_AUTHORIZED_KEYS": key.with_suffix(".pub").read_text()}
            client.create_sandbox(SANDBOX, environment=environment)
            client.wait_ready(SANDBOX, timeout=120)
        yield made


@dataclass
class LiveSession:
    """A running ``ssh`` whose output lines are read as they come."""

    process: subprocess.Popen[bytes]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    readers: list[PipeReader] = field(default_factory=list)

    def __post_init__(self) -> None:
        out, err = bytearray(), bytearray()

        def lines_of(buffer: bytearray, chunk: bytes) -> list[str]:
            buffer.extend(chunk)
            *complete, rest = buffer.split(b"\n")
            buffer[:] = rest
            return [line.decode(errors="replace") for line in complete]

        def on_out(chunk: bytes) -> None:
            for line in lines_of(out, chunk):
                self.lines.put(line)

        def on_err(chunk: bytes) -> None:
            self.errors.extend(lines_of(err, chunk))

        def out_ended() -> None:
            if out:  # a last line without its newline
                self.lines.put(out.decode(errors="replace"))
            self.lines.put(None)

        assert self.process.stdout is not None and self.process.stderr is not None
        self.readers = [
            PipeReader(self.process.stdout, on_out, name="live-ssh-stdout", on_end=out_ended),
            PipeReader(self.process.stderr, on_err, name="live-ssh-stderr"),
        ]  # fmt: skip

    def wait_for(self, wanted: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.fail(f"no {what} within {timeout:g} s")
            if line is None:
                self.lines.put(None)
                self.fail(f"the session ended before {what}")
            self.seen.append(line)
            if wanted(line):
                return line

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def ended(self, timeout: float = 60) -> int:
        """The exit code, once ssh has exited and all its output is read."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"ssh still running {timeout:g} s later")
        for reader in self.readers:
            reader.join(timeout=10)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        return code

    def ticks(self) -> list[int]:
        return [int(line.split()[1]) for line in self.seen if line.startswith("tick ")]

    def echoes(self) -> list[str]:
        return [line for line in self.seen if line.startswith("echo ")]

    def stall(self) -> float | None:
        """Seconds the proxy said the stream stalled, when it resumed."""
        for line in self.errors:
            if match := re.search(r"resumed after ([0-9.]+) s", line):
                return float(match.group(1))
        return None

    def fail(self, why: str) -> None:
        pytest.fail(f"{why}\nlast output: {self.seen[-5:]}\nstderr:\n" + "\n".join(self.errors))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for reader in self.readers:
            reader.join(timeout=10)
            reader.stop()  # it closes its pipe itself: closing it here would race its read
        if self.process.stdin is not None:
            self.process.stdin.close()


@pytest.fixture
def open_session(lab: Lab) -> Iterator[Callable[..., LiveSession]]:
    """Start ``ssh`` running the remote ticker/echo (a fresh session token each time)."""
    made: list[LiveSession] = []

    def start(*, resume_timeout: float = RESUME_TIMEOUT) -> LiveSession:
        with lab.client() as client:
            info = client.get_sandbox(SANDBOX)
            session = client.create_ssh_session(SANDBOX)
        argv = ssh_command(
            lab.gateway.name,
            session.sandbox_id,
            session.token,
            info.host_public_key,
            lab.key,
            [shlex.join(["python3", "-u", "-c", REMOTE])],
            known_hosts_file=lab.workdir / "known_hosts",
            resume_timeout=resume_timeout,
        )
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "XDG_CONFIG_HOME": str(lab.gateway.config_home)},
        )
        made.append(LiveSession(process))
        return made[-1]

    yield start
    for session in made:
        session.close()


def is_tick(at_least: int) -> Callable[[str], bool]:
    return lambda line: line.startswith("tick ") and int(line.split()[1]) >= at_least


def test_a_session_survives_a_killed_gateway_started_again(
    lab: Lab, open_session: Callable[..., LiveSession]
) -> None:
    session = open_session()
    session.wait_for(is_tick(3), "ticks", timeout=60)
    session.send("before")
    session.wait_for(lambda line: line == "echo before", "the echo before the kill")
    last = session.ticks()[-1]

    lab.gateway.kill()
    session.send("during")  # held by ssh-proxy until the stream resumes
    lab.gateway.deploy()  # what `gateway start` does

    session.wait_for(lambda line: line == "echo during", "the echo of what was sent meanwhile")
    session.wait_for(is_tick(session.ticks()[-1] + 5), "ticks after the resume")
    session.send("after")
    session.wait_for(lambda line: line == "echo after", "the echo after the resume")
    session.send("quit")
    assert session.ended() == 0, session.errors

    assert session.ticks() == list(range(len(session.ticks()))), "a tick lost or repeated"
    assert session.ticks()[-1] > last
    assert session.echoes() == ["echo before", "echo during", "echo after"]
    assert session.seen[-1] == "bye"
    assert any("broke" in line and "reconnecting through the gateway" in line
               for line in session.errors), session.errors  # fmt: skip
    stall = session.stall()
    assert stall is not None, session.errors
    print(f"stream stalled {stall:.1f} s across the gateway kill and start")


def test_a_session_survives_a_killed_gateway_whose_network_was_removed(
    lab: Lab, open_session: Callable[..., LiveSession]
) -> None:
    """The sandbox's side of the old tunnel then never hears a close: only its silence tells."""
    session = open_session()
    session.wait_for(is_tick(3), "ticks", timeout=60)
    engine, network = lab.gateway.engine, lab.gateway.container

    lab.gateway.kill()
    for endpoint in (engine.inspect_network(network) or {}).get("Containers") or {}:
        engine.disconnect_network(network, endpoint)
    engine.remove_network(network)
    session.send("during")
    lab.gateway.deploy()  # a new network; the sandbox is attached to it again

    session.wait_for(lambda line: line == "echo during", "the echo of what was sent meanwhile")
    session.wait_for(is_tick(session.ticks()[-1] + 5), "ticks after the resume")
    session.send("quit")
    assert session.ended() == 0, session.errors
    assert session.ticks() == list(range(len(session.ticks()))), "a tick lost or repeated"
    assert session.echoes() == ["echo during"]
    stall = session.stall()
    assert stall is not None, session.errors
    print(f"stream stalled {stall:.1f} s across the kill, the new network and the start")


def test_a_restarted_sandbox_ends_the_held_session_at_once_and_a_new_one_works(
    lab: Lab, open_session: Callable[..., LiveSession]
) -> None:
    with lab.client() as client:
        sandbox_id = client.get_sandbox(SANDBOX).id
    session = open_session()
    session.wait_for(is_tick(2), "ticks")

    lab.gateway.engine.restart_container(container_name(sandbox_id), timeout=10)

    assert session.ended(timeout=60) != 0
    said = "\n".join(session.errors)
    assert "the sandbox is stopping" in said or "the sandbox restarted" in said, said
    with lab.client() as client:
        client.wait_ready(SANDBOX, timeout=120)
    fresh = open_session()
    fresh.wait_for(is_tick(1), "ticks in a new session")
    fresh.send("quit")
    assert fresh.ended() == 0, fresh.errors


def test_a_gateway_down_longer_than_the_resume_timeout_ends_the_session_with_the_reason(
    lab: Lab, open_session: Callable[..., LiveSession]
) -> None:
    session = open_session(resume_timeout=3)
    session.wait_for(is_tick(2), "ticks")

    lab.gateway.kill()  # and it stays down

    assert session.ended(timeout=60) != 0
    said = "\n".join(session.errors)
    assert "could not be resumed within 3 s" in said, said
    assert "the SSH session is lost" in said
