"""The :class:`Engine` handle: one Docker engine, the verbs we use on it, and what it can do.

This is the only module (with the rest of :mod:`openshell_core.engine`) that talks to docker-py. Its
verbs return plain dicts as the Engine API does, and every docker-py or transport failure is turned
into an :mod:`openshell_core.errors` family by :func:`_translated`. Nothing here pulls an image:
a missing image is an :class:`~openshell_core.errors.ImageNotFoundError`.
"""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import docker
import docker.constants
import docker.errors
import requests.exceptions

from openshell_core import labels as _labels
from openshell_core.errors import (
    EngineCapabilityError,
    EngineError,
    EnginePermissionError,
    ImageNotFoundError,
    NoEngineError,
    NotFoundError,
)
from openshell_core.retry import poll_until
from openshell_core.users import owner_of, this_user

if TYPE_CHECKING:
    from openshell_core.engine.private import PrivateEngine

Json = dict[str, Any]

#: Seconds a single API call may take before we call the engine unresponsive.
API_TIMEOUT = 120
#: Seconds to wait for a container removal another client has in progress.
REMOVAL_WAIT = 60.0


@contextlib.contextmanager
def _translated(what: str, *, kind: str = "object", name: str = "") -> Iterator[None]:
    """Turn docker-py and transport errors into our error families (the one choke point)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFoundError(name or _explain(exc)) from exc
    except docker.errors.NotFound as exc:
        if kind == "image" or "No such image" in _explain(exc):
            raise ImageNotFoundError(name or _explain(exc)) from exc
        raise NotFoundError(kind, name or _explain(exc)) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{what} failed: {_explain(exc)}") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise EngineError(
            f"{what} failed: the Docker engine did not answer ({exc})",
            hint="is the engine still running? `pytest-openshell engine status` tells",
        ) from exc


def _explain(exc: docker.errors.APIError | docker.errors.DockerException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    return str(exc)


@dataclass
class Engine:
    """A Docker engine we talk to, with what it lets us do.

    :param client: the docker-py client bound to this engine.
    :param host: the engine address (``unix:///...`` or ``tcp://...``).
    :param source: how it was found (``DOCKER_HOST``, ``context <name>``, ``default socket``,
        ``private engine <name>``).
    :param private: the :class:`PrivateEngine` behind it when this project owns the daemon.
    """

    client: docker.DockerClient
    host: str
    source: str
    private: PrivateEngine | None = field(default=None, repr=False)

    # -- what this engine can do -------------------------------------------------------------

    @property
    def is_ours(self) -> bool:
        """True when this project started (and may stop) the daemon."""
        return self.private is not None

    @property
    def can_restart(self) -> bool:
        """True when the daemon can be restarted or crashed by us without disturbing anyone."""
        return self.private is not None

    def restart_daemon(self) -> None:
        """Stop the daemon gracefully and start it again (the ``docker-restart`` scenario)."""
        self._owned("restart the Docker daemon").restart()
        self.reconnect()

    def crash_daemon(self) -> None:
        """SIGKILL the daemon, containerd, shims and containers, then start the daemon again."""
        private = self._owned("crash the Docker daemon")
        private.crash()
        private.start()
        self.reconnect()

    def kill_daemon(self) -> None:
        """SIGKILL the daemon and containerd only, leaving the shims and containers running (the
        ``docker-daemon-kill`` scenario); :meth:`start_daemon` is its recovery."""
        self._owned("kill the Docker daemon").kill_daemon()

    def start_daemon(self) -> None:
        """Start the daemon again (``pytest-openshell engine start``); a no-op when it runs."""
        self._owned("start the Docker daemon").start()
        self.reconnect()

    def _owned(self, action: str) -> PrivateEngine:
        if self.private is None:
            raise EngineCapabilityError(
                f"cannot {action}: the engine at {self.host} ({self.source}) is not owned by "
                "pytest-openshell",
                hint="use a private engine (`--openshell-engine=private`) for daemon scenarios",
            )
        return self.private

    @property
    def socket_dir(self) -> Path | None:
        """The directory holding the engine's unix socket (None for a TCP engine).

        Containers that talk to the engine mount this directory, never the socket file: the
        daemon recreates the file when it restarts, and a file bind-mount would keep the old one.
        """
        if not self.host.startswith("unix://"):
            return None
        return Path(self.host.removeprefix("unix://")).parent

    def reconnect(self) -> None:
        """Drop pooled connections: the daemon's socket was recreated."""
        self.client.api.close()

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # -- engine ----------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the engine answers."""
        try:
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    def info(self) -> Json:
        with _translated("docker info"):
            return dict(self.api.info())

    def version(self) -> Json:
        with _translated("docker version"):
            return dict(self.api.version())

    def events(self, *, since: float, until: float) -> list[Json]:
        """Engine events in ``[since, until]`` (unix seconds)."""
        with _translated("docker events"):
            return list(self.api.events(since=int(since), until=int(until) + 1, decode=True))

    def watch_events(
        self, *, since: int, until: int, label_filters: Sequence[str]
    ) -> Iterator[Json]:
        """Events of the containers that carry every label of ``label_filters`` (``key=value``),
        from ``since`` and then as they happen, until ``until`` (unix seconds) has passed.

        :raises EngineError: the engine does not answer, or the stream broke.
        """
        with _translated("docker events"):
            stream = self.api.events(
                since=since,
                until=until,
                filters={"type": "container", "label": list(label_filters)},
                decode=True,
            )
            try:
                yield from stream
            except (requests.exceptions.RequestException, ValueError) as exc:
                raise EngineError(f"docker events: the stream broke ({exc})") from exc
            finally:
                stream.close()

    # -- containers --------------------------------------------------------------------------

    def inspect_container(self, name: str) -> Json | None:
        """The container's inspect document, or None when it does not exist."""
        try:
            with _translated(f"inspect container {name}", kind="container", name=name):
                return dict(self.api.inspect_container(name))
        except NotFoundError:
            return None

    def list_containers(self, *, label_filters: Sequence[str] = (), all: bool = True) -> list[Json]:
        with _translated("list containers"):
            return list(self.api.containers(all=all, filters={"label": list(label_filters)}))

    def create_container(
        self,
        *,
        name: str,
        image: str,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        hostname: str | None = None,
        environment: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        network: str | None = None,
        network_aliases: Sequence[str] = (),
        ports: Mapping[str, tuple[str, int]] | None = None,
        binds: Sequence[str] = (),
        restart_policy: str | None = None,
        healthcheck: Mapping[str, Any] | None = None,
        init: bool = True,
        extra_hosts: Mapping[str, str] | None = None,
    ) -> str:
        """Create (not start) a container and return its id. Never pulls: a missing image raises.

        :param ports: ``{"30051/tcp": ("127.0.0.1", 8080)}``.
        :param binds: ``["volume-or-path:/mount/point[:ro]", ...]``.
        """
        port_bindings = {key: [value] for key, value in (ports or {}).items()}
        host_config = self.api.create_host_config(
            binds=list(binds),
            port_bindings=port_bindings or None,
            restart_policy={"Name": restart_policy} if restart_policy else None,
            init=init,
            network_mode=network,
            extra_hosts=dict(extra_hosts) if extra_hosts else None,
        )
        networking = None
        if network:
            networking = self.api.create_networking_config(
                {network: self.api.create_endpoint_config(aliases=list(network_aliases) or None)}
            )
        with _translated(f"create container {name}", kind="image", name=image):
            created = self.api.create_container(
                image=image,
                name=name,
                command=list(command) if command is not None else None,
                entrypoint=list(entrypoint) if entrypoint is not None else None,
                hostname=hostname,
                environment=dict(environment or {}),
                labels=dict(labels or {}),
                ports=[_port_spec(key) for key in (ports or {})] or None,
                host_config=host_config,
                networking_config=networking,
                healthcheck=dict(healthcheck) if healthcheck else None,
            )
        return str(created["Id"])

    def start_container(self, name: str) -> None:
        """Start a container (a no-op when it runs).

        :raises NotFoundError: when the container does not exist.
        :raises EngineError: when something else it needs is missing, with Docker's words: e.g.
            ``network <id> not found`` for a container that records a network removed since.
        """
        try:
            with _translated(f"start container {name}", kind="container", name=name):
                self.api.start(name)
        except NotFoundError as exc:
            cause = exc.__cause__
            explanation = _explain(cause) if isinstance(cause, docker.errors.APIError) else ""
            if explanation and "no such container" not in explanation.lower():
                raise EngineError(f"start container {name} failed: {explanation}") from cause
            raise

    def stop_container(self, name: str, *, timeout: int = 10) -> None:
        with _translated(f"stop container {name}", kind="container", name=name):
            self.api.stop(name, timeout=timeout)

    def restart_container(self, name: str, *, timeout: int = 10) -> None:
        """``docker restart``: stop (SIGTERM, then SIGKILL after ``timeout`` s), then start."""
        with _translated(f"restart container {name}", kind="container", name=name):
            self.api.restart(name, timeout=timeout)

    def kill_container(self, name: str, *, signal: str = "KILL") -> None:
        with _translated(f"kill container {name}", kind="container", name=name):
            self.api.kill(name, signal=signal)

    def remove_container(self, name: str, *, force: bool = True) -> bool:
        """Remove a container; False when it did not exist. When another client is removing it
        already (a run's teardown racing another run's sweep), wait for that removal instead of
        failing: either way the container is gone when this returns."""
        try:
            with _translated(f"remove container {name}", kind="container", name=name):
                try:
                    self.api.remove_container(name, force=force, v=False)
                except docker.errors.APIError as exc:
                    if exc.status_code != 409 or "already in progress" not in _explain(exc):
                        raise
                    poll_until(
                        lambda: self.inspect_container(name),
                        lambda found: found is None,
                        timeout=REMOVAL_WAIT,
                        what=f"container {name} removed by the client already removing it",
                    )
        except NotFoundError:
            return False
        return True

    def wait_container(self, name: str, *, timeout: float = 120) -> int:
        """Block until a container exits; returns its exit code.

        :raises EngineError: when it has not exited within ``timeout`` seconds.
        """
        try:
            with _translated(f"wait for container {name}", kind="container", name=name):
                result = self.api.wait(name, timeout=timeout)
        except requests.exceptions.ReadTimeout as exc:
            raise EngineError(f"container {name} did not exit within {timeout:.0f} s") from exc
        return int(result.get("StatusCode", -1))

    def read_container_file(self, name: str, path: str) -> bytes:
        """The content of one regular file in a container, running or not (archive API).

        :raises NotFoundError: when the container or the file does not exist.
        """
        with _translated(f"read {path} from {name}", kind="file", name=f"{name}:{path}"):
            stream, _ = self.api.get_archive(name, path)
            archive = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=archive) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None else None
            if handle is None:
                raise NotFoundError("file", f"{name}:{path}")
            return handle.read()

    def read_container_files(self, name: str, directory: str) -> dict[str, bytes]:
        """Every regular file under ``directory`` in a container, running or not, by its path
        relative to ``directory`` (``pki/ca.crt``): one archive for all of them, where
        :meth:`read_container_file` costs one per file.

        :raises NotFoundError: when the container or the directory does not exist.
        """
        with _translated(f"read {directory} from {name}", kind="file", name=f"{name}:{directory}"):
            stream, _ = self.api.get_archive(name, directory)
            archive = io.BytesIO(b"".join(stream))
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=archive) as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    continue
                # The archive's paths begin with the directory's own name.
                _, _, relative = member.name.partition("/")
                if relative:
                    found[relative] = handle.read()
        return found

    def container_logs(self, name: str, *, tail: int = 20) -> list[str]:
        """The last ``tail`` lines of a container's output ([] when it is gone)."""
        try:
            with _translated(f"logs of {name}", kind="container", name=name):
                raw = self.api.logs(name, tail=tail, stdout=True, stderr=True)
        except (NotFoundError, EngineError):
            return []
        lines: list[str] = raw.decode(errors="replace").splitlines()
        return lines[-tail:]

    def exec_run(
        self,
        container: str,
        command: Sequence[str],
        *,
        user: str = "",
        environment: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> tuple[int, bytes]:
        """Run a command in a running container; returns (exit code, combined output)."""
        with _translated(f"exec in {container}", kind="container", name=container):
            exec_id = self.api.exec_create(
                container,
                list(command),
                user=user,
                environment=dict(environment or {}),
                stdin=stdin is not None,
            )["Id"]
            if stdin is not None:
                sock = self.api.exec_start(exec_id, socket=True)
                output = _exchange(sock, stdin)
            else:
                output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        return (int(code) if code is not None else -1, bytes(output))

    # -- volumes -----------------------------------------------------------------------------

    def inspect_volume(self, name: str) -> Json | None:
        try:
            with _translated(f"inspect volume {name}", kind="volume", name=name):
                return dict(self.api.inspect_volume(name))
        except NotFoundError:
            return None

    def create_volume(self, name: str, *, labels: Mapping[str, str]) -> Json:
        with _translated(f"create volume {name}", kind="volume", name=name):
            return dict(self.api.create_volume(name=name, labels=dict(labels)))

    def remove_volume(self, name: str) -> bool:
        try:
            with _translated(f"remove volume {name}", kind="volume", name=name):
                self.api.remove_volume(name, force=True)
        except NotFoundError:
            return False
        return True

    def list_volumes(self, *, label_filters: Sequence[str] = ()) -> list[Json]:
        with _translated("list volumes"):
            found = self.api.volumes(filters={"label": list(label_filters)})
        return list((found or {}).get("Volumes") or [])

    # -- networks ----------------------------------------------------------------------------

    def inspect_network(self, name: str) -> Json | None:
        try:
            with _translated(f"inspect network {name}", kind="network", name=name):
                found = dict(self.api.inspect_network(name))
        except NotFoundError:
            return None
        # Docker resolves id prefixes too; only an exact name or id is the network we asked for.
        if name not in (found.get("Name"), found.get("Id")):
            return None
        return found

    def create_network(self, name: str, *, labels: Mapping[str, str]) -> str:
        with _translated(f"create network {name}", kind="network", name=name):
            created = self.api.create_network(
                name, driver="bridge", attachable=True, labels=dict(labels), check_duplicate=True
            )
        return str(created["Id"])

    def remove_network(self, name: str) -> bool:
        try:
            with _translated(f"remove network {name}", kind="network", name=name):
                self.api.remove_network(name)
        except NotFoundError:
            return False
        return True

    def connect_network(self, network: str, container: str, *, aliases: Sequence[str] = ()) -> None:
        with _translated(f"connect {container} to {network}", kind="network", name=network):
            self.api.connect_container_to_network(container, network, aliases=list(aliases) or None)

    def disconnect_network(self, network: str, container: str) -> None:
        with _translated(f"disconnect {container} from {network}", kind="network", name=network):
            self.api.disconnect_container_from_network(container, network, force=True)

    def list_networks(self, *, label_filters: Sequence[str] = ()) -> list[Json]:
        with _translated("list networks"):
            return list(self.api.networks(filters={"label": list(label_filters)}))

    # -- images ------------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> Json | None:
        try:
            with _translated(f"inspect image {ref}", kind="image", name=ref):
                return dict(self.api.inspect_image(ref))
        except NotFoundError:
            return None

    def require_image(self, ref: str) -> Json:
        """The image's inspect document; :class:`ImageNotFoundError` when it is not local."""
        found = self.inspect_image(ref)
        if found is None:
            raise ImageNotFoundError(ref)
        return found

    def image_input_hash(self, ref: str) -> str | None:
        """The input hash label an image was built with, or None (absent image or label)."""
        found = self.inspect_image(ref)
        if found is None:
            return None
        labels = (found.get("Config") or {}).get("Labels") or {}
        value = labels.get(_labels.INPUT_HASH)
        return str(value) if value else None

    def import_image(self, tarball: IO[bytes], *, ref: str, changes: Sequence[str]) -> str:
        """``docker import`` a root filesystem tarball as ``ref``; returns the image id."""
        repository, _, tag = ref.rpartition(":")
        with _translated(f"import image {ref}"):
            self.api.import_image(
                src=tarball, repository=repository, tag=tag, changes=list(changes)
            )
        return str(self.require_image(ref)["Id"])

    def build_image(
        self,
        context: IO[bytes],
        *,
        ref: str,
        labels: Mapping[str, str],
        buildargs: Mapping[str, str] | None = None,
        dockerfile: str = "Dockerfile",
    ) -> Iterator[str]:
        """Build from a tar context with no network and no pull; yields progress lines.

        Raises :class:`EngineError` with the failing step's output when the build fails.
        """
        tail: list[str] = []
        with _translated(f"build image {ref}"):
            stream = self.api.build(
                fileobj=context,
                custom_context=True,
                tag=ref,
                labels=dict(labels),
                buildargs=dict(buildargs or {}),
                dockerfile=dockerfile,
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = "\n".join(tail[-15:])
                    raise EngineError(f"build of {ref} failed: {chunk['error']}\n{detail}")
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    tail.append(line)
                    yield line

    def tag_image(self, source: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":")
        with _translated(f"tag {source} as {ref}", kind="image", name=source):
            self.api.tag(source, repository, tag=tag, force=True)

    def remove_image(self, ref: str) -> bool:
        try:
            with _translated(f"remove image {ref}", kind="image", name=ref):
                self.api.remove_image(ref, force=True, noprune=False)
        except NotFoundError:
            return False
        return True

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _port_spec(key: str) -> tuple[int, str]:
    """``"30051/tcp"`` -> ``(30051, "tcp")``, the form docker-py's ``ports`` expects."""
    number, _, protocol = key.partition("/")
    return int(number), protocol or "tcp"


def _exchange(sock: Any, payload: bytes) -> bytes:
    """Write ``payload`` to an exec socket, half-close, and read the demultiplexed output."""
    raw = getattr(sock, "_sock", sock)
    raw.sendall(payload)
    with contextlib.suppress(OSError):
        raw.shutdown(1)  # SHUT_WR: the command sees end of input
    buffer = io.BytesIO()
    pending = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        pending += chunk
        # Docker multiplexes stdout/stderr with an 8-byte header per frame.
        while len(pending) >= 8:
            size = int.from_bytes(pending[4:8], "big")
            if len(pending) < 8 + size:
                break
            buffer.write(pending[8 : 8 + size])
            pending = pending[8 + size :]
    raw.close()
    return buffer.getvalue()


def connect(host: str, *, source: str, private: PrivateEngine | None = None) -> Engine:
    """An :class:`Engine` for ``host``; :class:`NoEngineError` when it does not answer.

    The API version is the engine's own (capped by docker-py's), learnt from one probe so that a
    failed probe leaves no connection behind.
    """
    hint = (
        "start it, or let pytest-openshell start a private one with `pytest-openshell engine start`"
    )
    if host.startswith("unix://") and not unix_socket_answers(Path(host.removeprefix("unix://"))):
        # Checked first by hand: docker-py leaks the socket of a failed unix connection.
        path = Path(host.removeprefix("unix://"))
        if _refuses_this_user(path):
            raise EnginePermissionError(
                f"permission denied: the Docker engine socket {path} ({source}) belongs to "
                f"{owner_of(path)}, and this user ({this_user()}) may not use it",
                hint="run as root (or as a member of the socket's group), or set DOCKER_HOST to "
                "an engine this user may use",
            )
        raise NoEngineError(f"no Docker engine answers at {host} ({source})", hint=hint)
    probe = docker.APIClient(base_url=host, version=_MIN_API, timeout=10)
    try:
        server_api = str(probe.version(api_version=False)["ApiVersion"])
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise NoEngineError(
            f"no Docker engine answers at {host} ({source}): {exc}", hint=hint
        ) from exc
    finally:
        probe.close()
    version = min(server_api, docker.constants.DEFAULT_DOCKER_API_VERSION, key=_api_tuple)
    client = docker.DockerClient(base_url=host, version=version, timeout=API_TIMEOUT)
    return Engine(client=client, host=host, source=source, private=private)


_MIN_API = "1.24"


def _refuses_this_user(socket_path: Path) -> bool:
    """True when connecting to ``socket_path`` is refused for want of permission."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(str(socket_path))
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def unix_socket_answers(socket_path: Path, timeout: float = 2.0) -> bool:
    """True when an engine answers ``GET /_ping`` on the unix socket ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = conn.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


def _api_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
