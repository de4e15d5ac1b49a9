"""Finding an engine: DOCKER_HOST, docker contexts, the default socket, our private engines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from openshell_core.cli import main
from openshell_core.engine import (
    Engine,
    EngineMode,
    PrivateEngine,
    connect,
    discovery,
    find_engine,
    open_engine,
)
from openshell_core.engine.discovery import candidate_hosts, private_engine_for
from openshell_core.errors import EngineCapabilityError, NoEngineError, UsageError
from openshell_core.gateway.names import container_name


def test_docker_host_wins_over_everything() -> None:
    assert candidate_hosts({"DOCKER_HOST": "tcp://127.0.0.1:1"}) == [
        ("tcp://127.0.0.1:1", "DOCKER_HOST")
    ]


def test_an_unanswering_docker_host_fails_with_one_clear_sentence(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "OPENSHELL_ENGINE_ROOT": str(tmp_path)}
    with pytest.raises(NoEngineError) as caught:
        find_engine(env)
    assert caught.value.message == (
        f"no Docker engine answers at DOCKER_HOST=unix://{tmp_path}/none.sock, and no other "
        "engine is used in its place"
    )
    assert "unset DOCKER_HOST" in str(caught.value.hint)


@pytest.mark.parametrize("mode", [EngineMode.HOST, EngineMode.AUTO])
def test_a_named_docker_host_that_does_not_answer_is_an_error_not_the_private_engine(
    private_engine: PrivateEngine, engine: Engine, mode: EngineMode
) -> None:
    # The private engine runs and would answer; the user named another engine.
    env = {
        "DOCKER_HOST": "unix:///nonexistent",
        "OPENSHELL_ENGINE_ROOT": str(private_engine.root.parent),
    }
    with pytest.raises(NoEngineError, match="no Docker engine answers at DOCKER_HOST"):
        open_engine(mode, env)


def test_host_mode_never_uses_a_running_private_engine(
    private_engine: PrivateEngine, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "DEFAULT_SOCKET", Path("/nonexistent/docker.sock"))
    env = {"OPENSHELL_ENGINE_ROOT": str(private_engine.root.parent), "DOCKER_CONTEXT": "default"}
    with pytest.raises(NoEngineError, match=r"no Docker engine of this host answers"):
        open_engine(EngineMode.HOST, env)


def test_the_cli_refuses_an_unanswering_docker_host_with_exit_3(
    private_engine: PrivateEngine,
    engine: Engine,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    code = main(["gateway", "start", "--engine", "host", "--name", unique_name])
    assert code == 3
    assert "error: no Docker engine answers at DOCKER_HOST=unix:///nonexistent" in (
        capsys.readouterr().err
    )
    assert engine.inspect_container(container_name(unique_name)) is None


def test_the_current_docker_context_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "docker"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"lab").hexdigest()
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "lab"}))
    (meta / "meta.json").write_text(
        json.dumps(
            {
                "Name": "lab",
                "Metadata": {},
                "Endpoints": {"docker": {"Host": "unix:///tmp/lab.sock"}},
            }
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert ("unix:///tmp/lab.sock", "docker context lab") in candidate_hosts({})


def test_a_docker_host_that_is_our_private_engine_is_known_as_ours(
    private_engine: PrivateEngine, engine: Engine
) -> None:
    env = {
        "DOCKER_HOST": private_engine.host,
        "OPENSHELL_ENGINE_ROOT": str(private_engine.root.parent),
    }
    with find_engine(env) as found:
        assert found.is_ours and found.can_restart
    assert private_engine_for(private_engine.host, env).root == private_engine.root  # type: ignore[union-attr]


def test_host_mode_never_starts_an_engine(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "OPENSHELL_ENGINE_ROOT": str(tmp_path)}
    with pytest.raises(NoEngineError):
        open_engine(EngineMode.HOST, env)
    assert not any(tmp_path.iterdir())


def test_an_engine_we_do_not_own_cannot_be_restarted(engine: Engine) -> None:
    # The same daemon, reached without knowing it is ours.
    with (
        connect(engine.host, source="DOCKER_HOST") as foreign,
        pytest.raises(EngineCapabilityError, match="not owned by pytest-openshell"),
    ):
        foreign.restart_daemon()


def test_unknown_engine_modes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="choose one of auto, host, private"):
        EngineMode.parse("remote")
