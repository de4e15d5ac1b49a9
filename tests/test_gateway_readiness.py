"""The default API probe (a TLS handshake with client certificate) and the poll backoff."""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from gateway_stub import make_pki

from openshell_core.engine import Engine
from openshell_core.errors import ReadinessTimeout
from openshell_core.gateway.deployment import _answers
from openshell_core.gateway.readiness import ApiTarget, tls_probe, wait_healthy
from openshell_core.host.metadata import write_mtls
from openshell_core.retry import backoff


def _write(directory: Path, pki: dict[str, bytes]) -> Path:
    directory.mkdir()
    for name, data in pki.items():
        (directory / name).write_bytes(data)
    return directory


@contextlib.contextmanager
def tls_server(pki_dir: Path) -> Iterator[int]:
    """A TLS server that requires a client certificate from its CA, like a gateway."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki_dir / "server.crt", pki_dir / "server.key")
    context.load_verify_locations(pki_dir / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us (a client outlasted the join): end, never raise
                return
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(2)
                while tls.recv(1024):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def pki_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pki")
    return _write(root / "one", make_pki("one")), _write(root / "two", make_pki("two"))


def _target(port: int, ca_dir: Path, client_dir: Path) -> ApiTarget:
    return ApiTarget(
        "127.0.0.1",
        port,
        ca_dir / "ca.crt",
        client_dir / "client.crt",
        client_dir / "client.key",
    )


def test_the_probe_completes_a_handshake_with_the_gateways_own_pki(
    pki_dirs: tuple[Path, Path],
) -> None:
    one, _ = pki_dirs
    with tls_server(one) as port:
        tls_probe(_target(port, one, one))


def test_the_probe_rejects_a_server_certificate_from_another_ca(
    pki_dirs: tuple[Path, Path],
) -> None:
    one, two = pki_dirs
    with tls_server(one) as port, pytest.raises(ssl.SSLCertVerificationError):
        tls_probe(_target(port, two, one))


def test_the_probe_fails_when_the_server_refuses_the_client_certificate(
    pki_dirs: tuple[Path, Path],
) -> None:
    one, two = pki_dirs
    with tls_server(one) as port, pytest.raises(OSError):
        tls_probe(_target(port, one, two))


def test_the_probe_fails_when_nothing_listens(pki_dirs: tuple[Path, Path]) -> None:
    one, _ = pki_dirs
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        tls_probe(_target(port, one, one))


def test_backoff_doubles_up_to_its_cap() -> None:
    assert list(itertools.islice(backoff(0.1, 2.0, 0.5), 5)) == [0.1, 0.2, 0.4, 0.5, 0.5]


class _Inspected:
    """An engine whose container runs with a fixed health status (pure logic: no Docker)."""

    def __init__(self, status: str) -> None:
        self.status = status

    def inspect_container(self, name: str) -> dict[str, object]:
        return {"State": {"Running": True, "Health": {"Status": self.status}}, "RestartCount": 0}

    def container_logs(self, name: str, *, tail: int = 20) -> list[str]:
        return []


def test_the_health_wait_ends_once_the_service_answers_though_docker_still_says_starting() -> None:
    engine = _Inspected("starting")
    answered = []

    def answers() -> bool:
        answered.append(True)
        return len(answered) >= 2  # answers at the second look

    waited = wait_healthy(engine, "gw", timeout=5, answers=answers)  # type: ignore[arg-type]
    assert waited < 1 and len(answered) == 2


def test_an_unhealthy_verdict_is_not_overruled_by_the_service_answering() -> None:
    engine = _Inspected("unhealthy")
    with pytest.raises(ReadinessTimeout, match="health status: unhealthy"):
        wait_healthy(engine, "gw", timeout=0.5, answers=lambda: True)  # type: ignore[arg-type]


class _NoCopyEngine:
    """Stands in for the engine where the test expects no call: copying a file out fails."""

    def __init__(self) -> None:
        self.copied: list[str] = []

    def read_container_files(self, container: str, directory: str) -> dict[str, bytes]:
        self.copied.append(directory)
        raise AssertionError(f"copied {directory} out of {container}")


def test_a_handshake_the_port_proxy_drops_counts_as_not_listening_yet(
    pki_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """While a container starts, Docker's port proxy accepts and drops each connection (an EOF
    in the handshake): the host's client files are not to blame, so none is copied again."""
    one, _ = pki_dirs
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    pki = {name: (one / name).read_bytes() for name in ("ca.crt", "client.crt", "client.key")}
    write_mtls("gw", ca_cert=pki["ca.crt"], cert=pki["client.crt"], key=pki["client.key"], env=env)
    listener = socket.create_server(("127.0.0.1", 0))

    def drop_one() -> None:
        # As the proxy does: it takes the client's hello, finds no backend, and closes (an EOF
        # to the client, not a reset).
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)

    dropping = threading.Thread(target=drop_one, daemon=True)
    dropping.start()
    engine = _NoCopyEngine()
    try:
        port = listener.getsockname()[1]
        answered = _answers(cast(Engine, engine), "gw", port, tls_probe, env)
    finally:
        dropping.join(5)
        listener.close()
    assert answered is None
    assert engine.copied == []
