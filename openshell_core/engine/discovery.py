"""Finding the engine to use: ``DOCKER_HOST``, the current docker context, the default socket, or
a private engine this project starts.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path

import docker.context
import docker.errors

from openshell_core.engine.client import Engine, connect
from openshell_core.engine.private import DEFAULT_NAME, PrivateEngine, engines_dir
from openshell_core.errors import EnginePrerequisiteError, NoEngineError, UsageError

DEFAULT_SOCKET = Path("/var/run/docker.sock")

NO_ENGINE = (
    "no Docker engine: set DOCKER_HOST or let pytest-openshell start a private one with "
    "`pytest-openshell engine start` (or `--openshell-engine=private`)"
)


class EngineMode(enum.Enum):
    """Which engine to use."""

    #: DOCKER_HOST / context / default socket when one answers, else a private engine.
    AUTO = "auto"
    #: Only an engine that already runs (DOCKER_HOST / context / default socket).
    HOST = "host"
    #: The private engine (started when it is not running).
    PRIVATE = "private"

    @classmethod
    def parse(cls, value: str) -> EngineMode:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(mode.value for mode in cls)
            raise UsageError(f"unknown engine mode {value!r}; choose one of {choices}") from None


def candidate_hosts(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Engine addresses to try, in order, as ``(host, how it was found)``."""
    env = os.environ if env is None else env
    if env.get("DOCKER_HOST"):
        return [(env["DOCKER_HOST"], "DOCKER_HOST")]
    found: list[tuple[str, str]] = []
    context_name = env.get("DOCKER_CONTEXT") or docker.context.config.get_current_context_name()
    if context_name and context_name != "default":
        try:
            context = docker.context.ContextAPI.get_context(context_name)
        except docker.errors.DockerException:
            context = None
        if context is not None and context.Host:
            found.append((context.Host, f"docker context {context_name}"))
    if DEFAULT_SOCKET.exists():
        found.append((f"unix://{DEFAULT_SOCKET}", "default socket"))
    return found


def private_engine_for(host: str, env: Mapping[str, str] | None = None) -> PrivateEngine | None:
    """The private engine whose socket ``host`` is, when it is one of ours."""
    if not host.startswith("unix://"):
        return None
    socket_path = Path(host.removeprefix("unix://")).absolute()
    root = socket_path.parent.parent
    if socket_path.name == "docker.sock" and root.parent == engines_dir(env):
        return PrivateEngine(root.name, root)
    return None


def find_engine(env: Mapping[str, str] | None = None) -> Engine:
    """The first engine that answers among :func:`candidate_hosts`; :class:`NoEngineError` else."""
    env = os.environ if env is None else env
    tried = []
    for host, source in candidate_hosts(env):
        try:
            return connect(host, source=source, private=private_engine_for(host, env))
        except NoEngineError:
            tried.append(f"{host} ({source})")
    default = PrivateEngine(DEFAULT_NAME, engines_dir(env) / DEFAULT_NAME)
    if default.is_running():
        return default.connect()
    detail = f"; tried {', '.join(tried)}" if tried else ""
    raise NoEngineError(NO_ENGINE + detail)


def open_engine(
    mode: EngineMode | str = EngineMode.AUTO, env: Mapping[str, str] | None = None
) -> Engine:
    """The engine to use under ``mode``, starting the private engine when the mode asks for it.

    With ``AUTO``, an engine that already answers wins; otherwise the private engine is started if
    this machine can run it, and the error says what is missing if it cannot.
    """
    env = os.environ if env is None else env
    mode = EngineMode.parse(mode) if isinstance(mode, str) else mode
    if mode is EngineMode.PRIVATE:
        private = PrivateEngine(DEFAULT_NAME, engines_dir(env) / DEFAULT_NAME)
        private.start()
        return private.connect()
    try:
        return find_engine(env)
    except NoEngineError:
        if mode is EngineMode.HOST:
            raise
    private = PrivateEngine(DEFAULT_NAME, engines_dir(env) / DEFAULT_NAME)
    try:
        private.start()
    except EnginePrerequisiteError as exc:
        raise NoEngineError(
            NO_ENGINE + "; a private engine cannot start here: " + "; ".join(exc.missing)
        ) from exc
    return private.connect()
