"""Host-side gateway files, in the layout upstream's CLI and the official ``openshell`` SDK read.

Under ``$XDG_CONFIG_HOME/openshell/`` (default ``~/.config/openshell/``):

- ``gateways/{name}/metadata.json``: :class:`GatewayMetadata` as JSON;
- ``gateways/{name}/mtls/{ca.crt,tls.crt,tls.key}``: the client's mTLS files (directory 0700,
  key 0600);
- ``active_gateway``: the active gateway's name.

Every file is written atomically (a temporary sibling, then a rename), so a reader sees the old
content or the new, never half of it. A file that is corrupt anyway raises :class:`MetadataError`,
a :class:`~openshell_core.errors.StateError`: it asks a person to look, and it is never a reason to
delete a gateway's volume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from openshell_core import locks
from openshell_core.errors import PermissionDeniedError, StateError
from openshell_core.users import owner_of, this_user

log = logging.getLogger("openshell.gateway")

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_ALIASES = {"cf_team_domain": "edge_team_domain", "cf_auth_url": "edge_auth_url"}


class MetadataError(StateError):
    """A host-side gateway file exists and cannot be used as it is."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(
            f"gateway metadata {path} is unusable: {problem}",
            hint="fix or delete the file; the gateway's Docker volume is not touched by this "
            "error, and `gateway start` writes a new file when it resumes",
        )


# -- where ------------------------------------------------------------------------------------


def config_home(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME``, else ``~/.config`` (as the SDK resolves it)."""
    env = os.environ if env is None else env
    configured = env.get("XDG_CONFIG_HOME")
    if configured:
        return Path(configured)
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".config"


def openshell_dir(env: Mapping[str, str] | None = None) -> Path:
    return config_home(env) / "openshell"


def gateways_dir(env: Mapping[str, str] | None = None) -> Path:
    return openshell_dir(env) / "gateways"


def gateway_dir(name: str, env: Mapping[str, str] | None = None) -> Path:
    return gateways_dir(env) / name


def metadata_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    return gateway_dir(name, env) / "metadata.json"


def active_gateway_path(env: Mapping[str, str] | None = None) -> Path:
    return openshell_dir(env) / "active_gateway"


# -- metadata.json ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayMetadata:
    """What upstream records about a gateway, with upstream's field names."""

    name: str
    gateway_endpoint: str
    is_remote: bool = False
    gateway_port: int = 0
    remote_host: str | None = None
    resolved_host: str | None = None
    auth_mode: str | None = None
    edge_team_domain: str | None = None
    edge_auth_url: str | None = None

    @classmethod
    def local(cls, name: str, port: int, gateway_host: str | None = None) -> GatewayMetadata:
        """The record of a gateway on this machine's engine, served over TLS on ``port``."""
        host = gateway_host or "127.0.0.1"
        return cls(name=name, gateway_endpoint=f"https://{host}:{port}", gateway_port=port)

    def gateway_host(self) -> str | None:
        """The host users reach the gateway by, when it is not a loopback address."""
        host = self.gateway_endpoint
        for scheme in ("https://", "http://"):
            host = host.removeprefix(scheme)
        if ":" in host and not host.endswith("]"):
            host = host.rsplit(":", 1)[0]
        if not host or host in _LOOPBACK_HOSTS:
            return None
        return host

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                record[item.name] = value
        return record

    @classmethod
    def from_json(cls, data: object, *, path: Path) -> GatewayMetadata:
        """Parse a decoded ``metadata.json``; :class:`MetadataError` when it is not one."""
        if not isinstance(data, dict):
            raise MetadataError(path, "it is not a JSON object")
        known = {item.name: item for item in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            target = _ALIASES.get(key, key)
            if target in known and value is not None:
                values[target] = value
        for required in ("name", "gateway_endpoint"):
            if not isinstance(values.get(required), str) or not values[required]:
                raise MetadataError(path, f"the field {required!r} is missing or not a string")
        port = values.get("gateway_port", 0)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise MetadataError(path, f"gateway_port {port!r} is not a port number")
        if not isinstance(values.get("is_remote", False), bool):
            raise MetadataError(path, "is_remote is not true or false")
        for key in ("remote_host", "resolved_host", "auth_mode", "edge_team_domain"):
            if key in values and not isinstance(values[key], str):
                raise MetadataError(path, f"{key} is not a string")
        return cls(**values)


def read_metadata(name: str, env: Mapping[str, str] | None = None) -> GatewayMetadata | None:
    """Gateway ``name``'s metadata; None when there is none.

    :raises MetadataError: when the file exists but is not valid (corrupt, truncated, wrong types).
    """
    path = metadata_path(name, env)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise host_files_denied(exc, env) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(path, f"it cannot be read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(
            path, f"it is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    metadata = GatewayMetadata.from_json(data, path=path)
    if metadata.name != name:
        raise MetadataError(path, f"it describes gateway {metadata.name!r}, not {name!r}")
    return metadata


def write_metadata(metadata: GatewayMetadata, env: Mapping[str, str] | None = None) -> Path:
    """Write ``metadata.json`` atomically; returns its path."""
    path = metadata_path(metadata.name, env)
    _private_dir(path.parent)
    text = json.dumps(metadata.to_json(), indent=2) + "\n"
    _atomic_write(path, text.encode(), mode=0o644)
    return path


# -- mtls/ ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MtlsFiles:
    """The client's mTLS material: the gateway CA, and the client certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, name: str, env: Mapping[str, str] | None = None) -> MtlsFiles:
        directory = gateway_dir(name, env) / "mtls"
        return cls(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")

    def exist(self) -> bool:
        return all(path.is_file() for path in (self.ca_cert, self.cert, self.key))


def write_mtls(
    name: str, *, ca_cert: bytes, cert: bytes, key: bytes, env: Mapping[str, str] | None = None
) -> MtlsFiles:
    """Replace gateway ``name``'s ``mtls/`` directory atomically (0700, key 0600).

    The files are written into a temporary sibling directory, checked, and renamed into place; the
    previous directory is kept aside until the rename succeeded.

    :raises StateError: when the material is empty or not PEM.
    """
    for label, data, marker in (
        ("ca.crt", ca_cert, b"-----BEGIN CERTIFICATE-----"),
        ("tls.crt", cert, b"-----BEGIN CERTIFICATE-----"),
        ("tls.key", key, b"PRIVATE KEY-----"),
    ):
        if marker not in data:
            raise StateError(
                f"refusing to write {label} for gateway {name!r}: it is empty or not PEM",
                hint="the gateway's PKI on its volume may be damaged; see its container log",
            )
    target = MtlsFiles.of(name, env)
    final = target.ca_cert.parent
    _private_dir(final.parent)
    token = uuid.uuid4().hex[:8]
    staging = final.with_name(f".mtls.tmp-{token}")
    backup = final.with_name(f".mtls.bak-{token}")
    staging.mkdir(mode=0o700)
    try:
        _atomic_write(staging / "ca.crt", ca_cert, mode=0o644)
        _atomic_write(staging / "tls.crt", cert, mode=0o644)
        _atomic_write(staging / "tls.key", key, mode=0o600)
        if final.exists():
            final.rename(backup)
        try:
            staging.rename(final)
        except OSError:
            if backup.exists():
                backup.rename(final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
    final.chmod(0o700)
    return target


# -- active_gateway ---------------------------------------------------------------------------


def read_active_gateway(env: Mapping[str, str] | None = None) -> str | None:
    """The active gateway's name, or None."""
    try:
        value = active_gateway_path(env).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise host_files_denied(exc, env) from None
    return value or None


def host_files_denied(
    exc: PermissionError, env: Mapping[str, str] | None = None
) -> PermissionDeniedError:
    """The error for a user who may not read the host-side gateway files: not a file to "fix or
    delete" (it is fine), but someone else's."""
    path = Path(exc.filename) if exc.filename else gateways_dir(env)
    return PermissionDeniedError(
        f"permission denied: {path} belongs to {owner_of(path)}, and this user "
        f"({this_user()}) may not read it",
        hint="run as the user who started the gateway (root, for a private engine), or set "
        "XDG_CONFIG_HOME to a directory of your own",
    )


def set_active_gateway(name: str, env: Mapping[str, str] | None = None) -> None:
    path = active_gateway_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, name.encode(), mode=0o644)


def clear_active_gateway(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Clear ``active_gateway`` when it names ``name``; True when it did."""
    if read_active_gateway(env) != name:
        return False
    active_gateway_path(env).unlink(missing_ok=True)
    return True


def remove_gateway_files(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Remove gateway ``name``'s host-side directory (metadata and mTLS files); True if it was
    there. ``active_gateway`` is the caller's business (:func:`clear_active_gateway`)."""
    directory = gateway_dir(name, env)
    if not directory.exists():
        return False
    shutil.rmtree(directory)
    return True


# -- the per-gateway lock ---------------------------------------------------------------------


@contextlib.contextmanager
def gateway_lock(name: str, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Hold the lock that serialises lifecycle operations on gateway ``name`` on this machine.

    The lock file sits beside the gateway directories (``gateways/.{name}.lock``), not inside one,
    so that removing a gateway's directory never hands the lock to two holders. It is an advisory
    ``flock`` (released by the kernel when its holder dies) on a file that exists only while held
    (:mod:`openshell_core.locks`); lock files that holders which died left behind are removed.
    """
    directory = gateways_dir(env)
    with locks.held(
        directory / f".{name}.lock",
        on_wait=lambda: log.info("Waiting for another operation on gateway %s to finish", name),
    ):
        for stale in directory.glob(".*.lock"):
            locks.remove_if_unheld(stale)
        yield


# -- helpers ----------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.chmod(mode)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
