"""The private engine: a real dockerd we start, restart, crash and stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine, PrivateEngine, _firewall, _proc
from openshell_core.engine.private import default_pool, validate_pool
from openshell_core.errors import EnginePrerequisiteError, UsageError
from openshell_core.images import ensure_base_image


@pytest.fixture(scope="module")
def lab(lab_engine_factory: Callable[[], PrivateEngine]) -> PrivateEngine:
    engine = lab_engine_factory()
    engine.start()
    return engine


@pytest.fixture(scope="module")
def lab_client(lab: PrivateEngine) -> Iterator[Engine]:
    handle = lab.connect()
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def lab_image(lab_client: Engine) -> str:
    return ensure_base_image(lab_client)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_get(port: int, path: str, *, deadline: float = 30.0) -> bytes:
    """GET from 127.0.0.1:port, retrying until the deadline (the server may still be starting)."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            if reply.startswith(b"HTTP/1.0 200"):
                return reply.split(b"\r\n\r\n", 1)[1]
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}{path} within {deadline} s: {last}")


def _web_container(
    client: Engine, image: str, name: str, network: str, *, port: int, volume: str | None = None
) -> str:
    """A python http.server on 8000 serving /data, which holds a file written at start."""
    return client.create_container(
        name=name,
        image=image,
        command=["sh", "-c", "mkdir -p /data && cd /data && exec python3 -m http.server 8000"],
        labels=labels.ownership(role="test"),
        network=network,
        ports={"8000/tcp": ("127.0.0.1", port)},
        binds=[f"{volume}:/data"] if volume else [],
        restart_policy="unless-stopped",
    )


def test_start_runs_a_daemon_that_answers(lab: PrivateEngine, lab_client: Engine) -> None:
    status = lab.status()
    assert status.running
    assert status.pid is not None and _proc.read(status.pid).name == "dockerd"  # type: ignore[union-attr]
    assert lab_client.ping()
    assert lab_client.is_ours and lab_client.can_restart


def test_second_start_finds_the_running_daemon(lab: PrivateEngine) -> None:
    pid = lab.status().pid
    assert lab.start() is False
    assert lab.status().pid == pid


def test_start_from_two_processes_at_once_gives_one_daemon(
    lab_engine_factory: Callable[[], PrivateEngine],
) -> None:
    engine = lab_engine_factory()
    code = (
        "import sys; from pathlib import Path; from openshell_core.engine import PrivateEngine;"
        f"e = PrivateEngine({engine.name!r}, Path({str(engine.root)!r}));"
        "print(e.start(), e.status().pid)"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [racer.communicate(timeout=120)[0].split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert sorted(started for started, _ in outputs) == ["False", "False", "True"]
    assert len({pid for _, pid in outputs}) == 1
    engine.stop()


def test_container_with_volume_network_and_published_port_answers(
    lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    port = _free_port()
    lab_client.create_volume(unique_name, labels=labels.ownership(role="test"))
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    _web_container(lab_client, lab_image, unique_name, unique_name, port=port, volume=unique_name)
    lab_client.start_container(unique_name)
    code, _ = lab_client.exec_run(unique_name, ["sh", "-c", "echo volume-data > /data/marker"])
    assert code == 0
    assert _http_get(port, "/marker") == b"volume-data\n"
    network = lab_client.inspect_network(unique_name)
    assert network is not None
    subnet = network["IPAM"]["Config"][0]["Subnet"]
    assert validate_pool(subnet) == subnet  # inside 198.18.0.0/15, never a private range
    assert subnet.startswith("198.1")


def test_two_containers_on_one_network_reach_each_other_by_name(
    lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    server = f"{unique_name}-srv"
    _web_container(lab_client, lab_image, server, unique_name, port=_free_port())
    lab_client.start_container(server)
    assert _fetch_from_peer(lab_client, lab_image, unique_name, server) == 0


def test_containers_reach_each_other_when_forward_policy_is_drop(
    lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    """An earlier dockerd with iptables on leaves FORWARD at DROP; our engine must still work."""
    if not _firewall.bridged_traffic_filtered():
        pytest.fail(
            "br_netfilter is off here, so this test cannot show the DROP case", pytrace=False
        )
    before = _firewall.forward_policy()
    _firewall.set_forward_policy("DROP")
    try:
        lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
        server = f"{unique_name}-srv"
        _web_container(lab_client, lab_image, server, unique_name, port=_free_port())
        lab_client.start_container(server)
        assert _fetch_from_peer(lab_client, lab_image, unique_name, server) == 0
    finally:
        _firewall.set_forward_policy(before or "ACCEPT")


def test_a_name_docker_does_not_know_is_never_looked_up_outside_the_machine(
    lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    """Docker's resolver forwards unknown names; ours go to the container's own loopback, where
    this probe listens and sees the query arrive (the host's name servers never see it)."""
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    probe = (
        "import socket, threading\n"
        "listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "listener.bind(('127.0.0.1', 53))\n"
        "listener.settimeout(10)\n"
        "def lookup():\n"
        "    try:\n"
        "        socket.getaddrinfo('no-such-name.invalid', 80)\n"
        "    except OSError:\n"
        "        pass\n"
        "threading.Thread(target=lookup, daemon=True).start()\n"
        "try:\n"
        "    listener.recvfrom(512)\n"
        "except TimeoutError:\n"
        "    raise SystemExit(3)\n"
    )
    name = f"{unique_name}-dns"
    code = _run_python(lab_client, lab_image, unique_name, name, probe)
    assert code == 0, lab_client.container_logs(name)


def _fetch_from_peer(client: Engine, image: str, network: str, server: str) -> int:
    client_name = f"{network}-cli"
    probe = (
        "import time, urllib.request\n"
        "for attempt in range(50):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://{server}:8000/', timeout=2); break\n"
        "    except OSError:\n"
        "        time.sleep(0.2)\n"
        "else:\n"
        "    raise SystemExit(1)\n"
    )
    return _run_python(client, image, network, client_name, probe)


def _run_python(client: Engine, image: str, network: str, name: str, source: str) -> int:
    """Run ``python3 -c source`` in a container on ``network``; its exit code."""
    client.create_container(
        name=name,
        image=image,
        command=["python3", "-c", source],
        labels=labels.ownership(role="test"),
        network=network,
    )
    client.start_container(name)
    return client.wait_container(name, timeout=60)


def _wait_for_marker(port: int) -> bytes:
    return _http_get(port, "/marker", deadline=60)


def test_restart_brings_unless_stopped_container_back_with_its_volume_data(
    lab: PrivateEngine, lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    port = _free_port()
    lab_client.create_volume(unique_name, labels=labels.ownership(role="test"))
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    _web_container(lab_client, lab_image, unique_name, unique_name, port=port, volume=unique_name)
    lab_client.start_container(unique_name)
    lab_client.exec_run(unique_name, ["sh", "-c", "echo before-restart > /data/marker"])
    first_start = lab_client.inspect_container(unique_name)["State"]["StartedAt"]  # type: ignore[index]

    lab_client.restart_daemon()

    assert _wait_for_marker(port) == b"before-restart\n"
    assert lab_client.inspect_container(unique_name)["State"]["StartedAt"] != first_start  # type: ignore[index]


def test_crash_then_start_brings_unless_stopped_container_back(
    lab: PrivateEngine, lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    port = _free_port()
    lab_client.create_volume(unique_name, labels=labels.ownership(role="test"))
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    _web_container(lab_client, lab_image, unique_name, unique_name, port=port, volume=unique_name)
    lab_client.start_container(unique_name)
    lab_client.exec_run(unique_name, ["sh", "-c", "echo before-crash > /data/marker"])
    container_pid = lab_client.inspect_container(unique_name)["State"]["Pid"]  # type: ignore[index]

    lab.crash()
    assert not _proc.is_alive(container_pid), "a power cut kills the container's processes too"
    assert not lab.is_running()
    lab.start()
    lab_client.reconnect()

    assert _wait_for_marker(port) == b"before-crash\n"


def _kill_dockerd_and_containerd(engine: PrivateEngine) -> None:
    """What an OOM kill or ``systemctl kill docker`` does: the shims and containers live on."""
    victims = {
        process.pid
        for process in _proc.all_processes()
        if process.name in ("dockerd", "containerd")
        and any(str(engine.exec_root) in arg for arg in process.argv)
    }
    assert victims, "the running engine has a dockerd and a containerd"
    _proc.kill_all(victims)
    assert not _proc.wait_gone(victims, timeout=15)


def _mounts_below(root: Path) -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{root}/")]


def test_start_after_a_daemon_kill_brings_unless_stopped_containers_back(
    lab: PrivateEngine, lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    port = _free_port()
    lab_client.create_volume(unique_name, labels=labels.ownership(role="test"))
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    _web_container(lab_client, lab_image, unique_name, unique_name, port=port, volume=unique_name)
    lab_client.start_container(unique_name)
    lab_client.exec_run(unique_name, ["sh", "-c", "echo before-kill > /data/marker"])
    before = lab_client.inspect_container(unique_name)["State"]  # type: ignore[index]

    _kill_dockerd_and_containerd(lab)
    assert _proc.is_alive(before["Pid"]), "the container outlives its daemon"
    lab.start()
    lab_client.reconnect()

    # Docker restarts unless-stopped containers before its API answers: no wait is needed.
    after = lab_client.inspect_container(unique_name)["State"]  # type: ignore[index]
    assert after["Running"], f"the container stayed down after engine start: {after}"
    assert after["StartedAt"] != before["StartedAt"]
    assert _wait_for_marker(port) == b"before-kill\n"


def test_kill_daemon_spares_the_containers(
    lab: PrivateEngine, lab_client: Engine, lab_image: str, unique_name: str
) -> None:
    lab_client.create_network(unique_name, labels=labels.ownership(role="test"))
    _web_container(lab_client, lab_image, unique_name, unique_name, port=_free_port())
    lab_client.start_container(unique_name)
    container_pid = lab_client.inspect_container(unique_name)["State"]["Pid"]  # type: ignore[index]
    try:
        lab.kill_daemon()
        assert not lab.is_running()
        assert _proc.is_alive(container_pid)
    finally:
        lab.start()
        lab_client.reconnect()


def test_stop_after_a_daemon_kill_leaves_no_mount_behind(
    lab_engine_factory: Callable[[], PrivateEngine],
) -> None:
    engine = lab_engine_factory()
    engine.start()
    assert _mounts_below(engine.root), "dockerd bind-mounts its data root onto itself"
    _kill_dockerd_and_containerd(engine)
    engine.start()

    engine.stop()

    assert _mounts_below(engine.root) == []


def _engine_with_a_sleeping_container(
    lab_engine_factory: Callable[[], PrivateEngine], *, restart_policy: str | None
) -> PrivateEngine:
    """A started lab engine running container ``stoptest`` (``sleep infinity``, which does not
    handle SIGTERM itself) on network ``stoptest``, made with ``create_container``'s defaults."""
    engine = lab_engine_factory()
    engine.start()
    client = engine.connect()
    try:
        image = ensure_base_image(client)
        client.create_network("stoptest", labels=labels.ownership(role="test"))
        client.create_container(
            name="stoptest",
            image=image,
            command=["sleep", "infinity"],
            network="stoptest",
            labels=labels.ownership(role="test"),
            restart_policy=restart_policy,
        )
        client.start_container("stoptest")
    finally:
        client.close()
    return engine


def test_stop_leaves_no_process_behind(lab_engine_factory: Callable[[], PrivateEngine]) -> None:
    engine = _engine_with_a_sleeping_container(lab_engine_factory, restart_policy="unless-stopped")
    assert engine._engine_processes(), "the running engine has processes to find"

    engine.stop()

    assert engine._engine_processes() == set()
    assert not engine.is_running()
    assert not engine.socket_path.exists()


def test_stop_ends_each_container_by_the_sigterm_its_init_passes_on(
    lab_engine_factory: Callable[[], PrivateEngine],
) -> None:
    """The init in every container (``create_container``'s default) passes the daemon's SIGTERM
    to the process that ignores it as PID 1: the container ends by that signal (128 + 15) at
    once, not by the SIGKILL the daemon sends after its 10 s shutdown timeout (128 + 9)."""
    engine = _engine_with_a_sleeping_container(lab_engine_factory, restart_policy=None)

    engine.stop()

    engine.start()  # the container's last exit, as the daemon recorded it
    client = engine.connect()
    try:
        state = (client.inspect_container("stoptest") or {}).get("State") or {}
    finally:
        client.close()
    assert (state.get("Running"), state.get("ExitCode")) == (False, 143), state


def test_a_daemon_on_our_paths_without_our_pidfile_is_refused(
    lab_engine_factory: Callable[[], PrivateEngine],
) -> None:
    engine = lab_engine_factory()
    engine.start()
    pid = engine.status().pid
    engine.pidfile.rename(engine.root / "moved.pid")  # as if someone started dockerd by hand
    try:
        with pytest.raises(EnginePrerequisiteError) as caught:
            engine.start()
        assert f"another dockerd (pid {pid}) holds" in str(caught.value)
    finally:
        (engine.root / "moved.pid").rename(engine.pidfile)
        engine.stop()


def test_not_root_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # The effective user is what the check reads. (A real process as nobody could not even read
    # a checkout under root's 0700 home, so the user is changed where the check looks.)
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(EnginePrerequisiteError) as caught:
        PrivateEngine("x", Path("/tmp/ose-not-root")).check_prerequisites()
    assert any("not running as root: dockerd needs root" in line for line in caught.value.missing)


def test_missing_dockerd_names_the_install_command(tmp_path: Path) -> None:
    engine = PrivateEngine("nodockerd", Path("/tmp/ose-nodockerd"), dockerd="dockerd-not-installed")
    with pytest.raises(EnginePrerequisiteError) as caught:
        engine.start()
    assert any("apt-get install -y docker.io" in line for line in caught.value.missing)
    assert not engine.socket_path.exists()


def test_a_root_too_long_for_unix_sockets_is_refused() -> None:
    engine = PrivateEngine("long", Path("/tmp/" + "x" * 90))
    with pytest.raises(EnginePrerequisiteError, match="too long for unix sockets"):
        engine.check_prerequisites()


def test_default_pools_stay_inside_the_benchmark_range() -> None:
    for name in ("default", "lab-1", "worker-gw3", "x" * 40):
        pool = default_pool(Path("/tmp/ose-pools") / name, name)
        assert validate_pool(pool) == pool
        assert pool.startswith(("198.18.", "198.19.")) and pool.endswith("/20")


def test_engines_of_one_name_under_different_roots_get_different_pools() -> None:
    # Both are called ``default``, as every engine is unless named: the root tells them apart.
    first = PrivateEngine("default", Path("/var/lib/pytest-openshell/engines-a/default"))
    second = PrivateEngine("default", Path("/srv/other-engines/default"))
    assert first.address_pool != second.address_pool
    assert first.address_pool == PrivateEngine("default", first.root).address_pool


def test_an_engine_keeps_the_pool_recorded_at_its_first_start(tmp_path: Path) -> None:
    # Its networks live in that pool and its firewall rule names it, whatever the default says.
    (tmp_path / "address-pool").write_text("198.19.240.0/20\n")
    assert PrivateEngine("default", tmp_path).address_pool == "198.19.240.0/20"


@pytest.mark.parametrize("pool", ["10.1.0.0/16", "172.17.0.0/16", "192.168.5.0/24", "0.0.0.0/0"])
def test_pools_in_private_ranges_are_refused(pool: str) -> None:
    with pytest.raises(UsageError, match="must not be used here"):
        validate_pool(pool)


def test_a_lease_stops_only_the_engine_it_started_and_only_when_last(
    lab_engine_factory: Callable[[], PrivateEngine],
) -> None:
    engine = lab_engine_factory()
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from openshell_core.engine import PrivateEngine;"
            f"e = PrivateEngine({engine.name!r}, Path({str(engine.root)!r}))\n"
            "with e.lease():\n    print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None and other.stdout.readline().strip() == "held"
    with engine.lease():
        assert engine.is_running()
    assert engine.is_running(), "the other process started it and still holds it"
    other.communicate("\n", timeout=60)
    assert not engine.is_running(), "the last holder, which started it, stopped it"
