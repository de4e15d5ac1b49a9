"""No secret of a run reaches what the run writes down: a run made to fail, with a sandbox and a
scenario (so artefacts are captured), is searched for its handshake secret, its private keys and
its session tokens in every artefact file, the terminal report and the JUnit XML."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openshell_core.images import ImageSet

INNER_CONFTEST = """
    import json
    import os

    import pytest

    from openshell_core.host.api_client import GatewayClient


    def note(kind, value):
        with open(os.environ["SECRETS_FILE"], "a") as out:
            out.write(json.dumps({"kind": kind, "value": value}) + "\\n")


    @pytest.fixture(autouse=True)
    def _record_every_token(monkeypatch):
        original = GatewayClient.create_ssh_session

        def recording(self, name):
            session = original(self, name)
            note("session token", session.token)
            return session

        monkeypatch.setattr(GatewayClient, "create_ssh_session", recording)
"""

INNER_TEST = """
    import json
    import logging
    import os

    from conftest import note

    PKI = "/var/lib/openshell/pki"


    def test_fails_on_purpose(openshell, openshell_engine, openshell_fresh_gateway,
                              openshell_scenario, openshell_sandbox_factory, openshell_ssh):
        gateway = openshell_fresh_gateway
        info = openshell_sandbox_factory.create(gateway, "one")
        found = openshell_engine.inspect_container(f"openshell-sandbox-{info.id}")
        variables = dict(item.split("=", 1) for item in found["Config"]["Env"])
        note("handshake secret", variables["OPENSHELL_SSH_HANDSHAKE_SECRET"])
        note("sandbox host key", variables["OPENSHELL_SSH_HOST_KEY"])
        container = f"openshell-cluster-{gateway.name}"
        for key in ("ca.key", "server.key", "client.key"):
            note(key, openshell_engine.read_container_file(container, f"{PKI}/{key}").decode())
        note("run SSH key", openshell.user_key().read_text())
        assert openshell_scenario.run(gateway).recovered
        result = openshell_ssh.run(gateway, "one", "echo hello; exit 3")
        print("ran", result)
        logging.getLogger("inner").warning("ssh command line: %s", result.args)
        raw = {name: openshell_engine.container_logs(name, tail=100000)
               for name in (container, f"openshell-sandbox-{info.id}")}
        with open(os.environ["RAW_LOGS_FILE"], "w") as out:
            json.dump(raw, out)
        assert result.returncode == 0, result
"""


@dataclass(frozen=True)
class FailedRun:
    output: str = field(repr=False)
    artefacts: Path
    junit: str = field(repr=False)
    secrets: dict[str, list[str]] = field(repr=False)
    #: the gateway's and the sandbox's own logs (``docker logs``), as they wrote them
    raw_logs: dict[str, list[str]] = field(repr=False)

    def needles(self) -> dict[str, str]:
        """What must not be found, by description: each secret whole, and each line of a private
        key's body on its own (a key may be quoted with its newlines escaped, or cut short)."""
        found: dict[str, str] = {}
        for kind, values in self.secrets.items():
            for number, value in enumerate(values):
                found[f"{kind} #{number}"] = value.strip()
                lines = [line.strip() for line in value.splitlines()]
                for line in lines:
                    if len(line) >= 16 and not line.startswith("-----"):
                        found[f"{kind} #{number}, the key line {line[:8]}..."] = line
        return found


@pytest.fixture(scope="module")
def failed_run(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """One inner pytest run whose only test fails after a scenario, with a sandbox it reached
    over SSH; its secrets recorded (outside the artefacts) as the test met them."""
    directory = tmp_path_factory.mktemp("failing-run")
    (directory / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    (directory / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    secrets_file, raw_logs = directory / "secrets.jsonl", directory / "raw-logs.json"
    artefacts, junit = directory / "artefacts", directory / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--openshell-gateway"]
    command += ["--openshell-engine=private", "--openshell-scenarios=stop-start", "-rA"]
    command += [f"--openshell-artifacts={artefacts}", f"--junitxml={junit}"]
    command += ["-o", "junit_logging=all", "test_inner.py"]
    result = subprocess.run(
        command,
        cwd=directory,
        env={**os.environ, "SECRETS_FILE": str(secrets_file), "RAW_LOGS_FILE": str(raw_logs)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "1 failed" in output, output
    secrets: dict[str, list[str]] = {}
    for line in secrets_file.read_text().splitlines():
        entry = json.loads(line)
        secrets.setdefault(entry["kind"], []).append(entry["value"])
    logs = json.loads(raw_logs.read_text())
    return FailedRun(output, artefacts, junit.read_text(), secrets, logs)


def _leaks(text: str, run: FailedRun) -> list[str]:
    return [what for what, needle in run.needles().items() if needle in text]


def test_the_failed_run_met_every_kind_of_secret(failed_run: FailedRun) -> None:
    """The searches below mean something only if the run had these secrets and wrote down the
    places they were in: the sandbox's environment, the ssh command line."""
    kinds = {"handshake secret", "sandbox host key", "ca.key", "client.key", "run SSH key"}
    assert kinds <= set(failed_run.secrets), failed_run.secrets.keys()
    assert failed_run.secrets.get("session token"), "no SSH session token was made"
    inspected = "".join(path.read_text() for path in failed_run.artefacts.rglob("*inspect.json"))
    assert "OPENSHELL_SSH_HANDSHAKE_SECRET=" in inspected
    assert "OPENSHELL_SSH_HOST_KEY=" in inspected
    assert "--token=" in failed_run.output


def test_no_secret_of_a_failed_run_is_in_any_artefact_file(failed_run: FailedRun) -> None:
    files = [path for path in failed_run.artefacts.rglob("*") if path.is_file()]
    assert files, "no artefacts were written"
    leaks = {
        str(path.relative_to(failed_run.artefacts)): found
        for path in files
        if (found := _leaks(path.read_bytes().decode(errors="replace"), failed_run))
    }
    assert not leaks, leaks


def test_no_secret_of_a_failed_run_is_in_the_terminal_report(failed_run: FailedRun) -> None:
    assert "openshell artefacts" in failed_run.output
    assert not _leaks(failed_run.output, failed_run)


def test_no_secret_of_a_failed_run_is_in_the_junit_xml(failed_run: FailedRun) -> None:
    assert "ssh command line" in failed_run.junit  # the captured log is in it
    assert not _leaks(failed_run.junit, failed_run)


def test_the_gateway_and_the_sandbox_never_log_a_secret(failed_run: FailedRun) -> None:
    """Their own logs, before any redaction: nothing to mask there in the first place."""
    assert len(failed_run.raw_logs) == 2
    assert all(lines for lines in failed_run.raw_logs.values()), failed_run.raw_logs.keys()
    leaks = {
        name: found
        for name, lines in failed_run.raw_logs.items()
        if (found := _leaks("\n".join(lines), failed_run))
    }
    assert not leaks, leaks


def test_artefact_files_are_readable_by_their_owner_only(failed_run: FailedRun) -> None:
    paths = [failed_run.artefacts, *failed_run.artefacts.rglob("*")]
    modes = {
        str(path): oct(stat.S_IMODE(path.stat().st_mode))
        for path in paths
        if stat.S_IMODE(path.stat().st_mode) & 0o077
    }
    assert not modes, modes
