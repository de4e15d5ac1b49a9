"""How the command line reads its arguments (no engine, no gateway: errors name what was read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openshell_core.cli import main


@pytest.fixture(autouse=True)
def _empty_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("OPENSHELL_GATEWAY", raising=False)


@pytest.mark.parametrize("action", ["exec", "connect"])
def test_options_between_the_sandbox_name_and_the_command_are_the_clis(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sandbox", action, "work", "--gateway", "elsewhere", "--", "true"]) == 1
    assert "gateway 'elsewhere' not found" in capsys.readouterr().err


def test_options_before_the_sandbox_name_still_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "exec", "--gateway", "elsewhere", "work", "--", "true"]) == 1
    assert "gateway 'elsewhere' not found" in capsys.readouterr().err


def test_a_double_dash_is_refused_where_no_remote_command_is_taken(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sandbox", "list", "--", "ls"]) == 2
    assert "only for sandbox exec and sandbox connect" in capsys.readouterr().err
