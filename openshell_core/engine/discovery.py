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

from openshell_core.engine.docker_api import Engine, connect
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, PrivateEngine, engines_dir
from openshell_core.errors import (
    EnginePermissionError,
    EnginePrerequisiteError,
    NoEngineError,
    UsageError,
)

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
    """The engine already running that this environment names, or :class:`NoEngineError`.

    ``DOCKER_HOST``, when set, is the only candidate: a user who names an engine gets that engine
    or an error, never another one. Otherwise the current docker context and the default socket
    are tried, then the default private engine when it runs.
    """
    env = os.environ if env is None else env
    if env.get("DOCKER_HOST"):
        return _named_engine(env)
    found = _answering_host(env)
    if found is not None:
        return found
    default = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir(env) / DEFAULT_ENGINE_NAME)
    if default.is_running():
        return default.connect()
    raise NoEngineError(NO_ENGINE + _tried(env))


def _answering_host(env: Mapping[str, str]) -> Engine | None:
    for host, source in candidate_hosts(env):
        try:
            return connect(host, source=source, private=private_engine_for(host, env))
        except NoEngineError:
            continue
    return None


def _tried(env: Mapping[str, str]) -> str:
    tried = [f"{host} ({source})" for host, source in candidate_hosts(env)]
    return f"; tried {', '.join(tried)}" if tried else ""


def _named_engine(env: Mapping[str, str]) -> Engine:
    """The engine ``DOCKER_HOST`` names, or an error saying it does not answer."""
    host = env["DOCKER_HOST"]
    try:
        return connect(host, source="DOCKER_HOST", private=private_engine_for(host, env))
    except EnginePermissionError:
        raise  # it answers, to another user: that says more than "does not answer"
    except NoEngineError as exc:
        raise NoEngineError(
            f"no Docker engine answers at DOCKER_HOST={host}, and no other engine is used in "
            "its place",
            hint="start that engine, or unset DOCKER_HOST to use the default socket or a private "
            "engine (`pytest-openshell engine start`)",
        ) from exc


def open_engine(
    mode: EngineMode | str = EngineMode.AUTO, env: Mapping[str, str] | None = None
) -> Engine:
    """The engine to use under ``mode``, starting the private engine when the mode asks for it.

    ``HOST`` takes only an engine that already runs and is not ours to start: ``DOCKER_HOST``,
    else the docker context or the default socket, else :class:`NoEngineError` (never the private
    engine). ``AUTO`` takes ``DOCKER_HOST`` when set (starting it only when it names one of our
    private engines), else an engine that answers, else the private engine, started if this
    machine can run it (the error says what is missing if it cannot).
    """
    env = os.environ if env is None else env
    mode = EngineMode.parse(mode) if isinstance(mode, str) else mode
    if mode is EngineMode.PRIVATE:
        private = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir(env) / DEFAULT_ENGINE_NAME)
        private.start()
        return private.connect()
    if env.get("DOCKER_HOST"):
        named = private_engine_for(env["DOCKER_HOST"], env)
        if mode is EngineMode.AUTO and named is not None:
            named.start()
        return _named_engine(env)
    found = _answering_host(env)
    if found is not None:
        return found
    if mode is EngineMode.HOST:
        # Never the private engine in its place: the user chose an engine of the host's.
        raise NoEngineError(
            "no Docker engine of this host answers (engine mode host)" + _tried(env),
            hint="start Docker or set DOCKER_HOST; or use the private engine (`--engine private`, "
            "`--openshell-engine=private`)",
        )
    private = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir(env) / DEFAULT_ENGINE_NAME)
    try:
        private.start()
    except EnginePrerequisiteError as exc:
        raise NoEngineError(
            NO_ENGINE + "; a private engine cannot start here: " + "; ".join(exc.missing)
        ) from exc
    return private.connect()
