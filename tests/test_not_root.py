"""Every command run by a user other than the one who owns the engine and the gateway files (root):
one error line naming the problem (permission) and a hint naming the fix, never a traceback.

The user is changed in this process (effective uid and gid ``nobody``) around each command: a real
process as nobody could not even read a checkout under root's 0700 home. Everything the commands
import is imported before, as root.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openshell_core.cli import build_parser, main
from openshell_core.engine import Engine, PrivateEngine

NOBODY = 65534

VERBS = [
    ["engine", "start"],
    ["engine", "stop"],
    ["engine", "restart"],
    ["engine", "status"],
    ["images", "build"],
    ["gateway", "start", "--name", "mine"],
    ["gateway", "stop", "--name", "mine"],
    ["gateway", "destroy", "--name", "mine"],
    ["gateway", "status", "--name", "mine"],
    ["gateway", "stop"],  # the active gateway, read from the config directory
    ["sandbox", "list", "--gateway", "mine"],
    ["sandbox", "create", "work", "--gateway", "mine"],
    ["sandbox", "get", "work", "--gateway", "mine"],
    ["sandbox", "delete", "work", "--gateway", "mine"],
    ["sandbox", "exec", "work", "--gateway", "mine", "--", "true"],
    ["sandbox", "connect", "work", "--gateway", "mine"],
    ["ssh-proxy", "--gateway", "mine", "--sandbox-id", "s1", "--token", "t"],
]


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.fixture
def roots_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_engine: PrivateEngine, engine: Engine
) -> Path:
    """Root's engine (running) and root's config directory, with a gateway ``mine`` in it."""
    home = tmp_path / "config"
    gateway_dir = home / "openshell" / "gateways" / "mine"
    gateway_dir.mkdir(parents=True)
    (gateway_dir / "metadata.json").write_text(json.dumps({"name": "mine"}))
    (home / "openshell" / "active_gateway").write_text("mine")
    home.chmod(0o700)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("OPENSHELL_ENGINE_ROOT", str(private_engine.root.parent))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)
    build_parser()  # imports every command's module
    return home


@pytest.mark.parametrize("argv", VERBS, ids=" ".join)
def test_every_command_as_another_user_says_permission_denied_and_the_fix(
    roots_config: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with as_nobody():
        code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code in (1, 3), err
    assert lines[-2].startswith("error: permission denied: "), err
    assert "this user (nobody)" in lines[-2], err
    assert lines[-1].startswith("  hint: run as "), err
    assert "unusable" not in err and "fix or delete" not in err


def test_a_socket_this_user_may_not_use_is_named_as_such(
    private_engine: PrivateEngine, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["DOCKER_HOST"] = private_engine.host
    try:
        with as_nobody():
            code = main(["gateway", "status", "--name", "mine", "--engine", "host"])
    finally:
        del os.environ["DOCKER_HOST"]
    err = capsys.readouterr().err
    assert code == 3
    assert f"error: permission denied: the Docker engine socket {private_engine.socket_path}" in err
