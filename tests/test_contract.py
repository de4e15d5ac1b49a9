"""The contract between host, gateway and sandbox is spelled once: in ``openshell_core.wire.contract``.

Each value of the contract (a name, path, port, environment variable, header or label) must not
appear as a literal anywhere else in the package sources; a side that needs it imports it. The
few exceptions are listed here with their reason.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openshell_core.wire import contract

ROOT = Path(__file__).resolve().parent.parent
#: The sources that speak for the host, the gateway and the sandbox.
SOURCES = ("openshell_core", "pytest_openshell")
CONTRACT_FILE = ROOT / "openshell_core" / "wire" / "contract.py"

#: Values not searched for, and why.
NOT_SEARCHED = {
    # Ordinary words: as literals they mostly mean something else.
    contract.READY_MARKER_FILE: "an ordinary word",
    contract.PKI_DIR: "an ordinary word",
    contract.GATEWAY_ROLE: "an ordinary word",
    contract.SANDBOX_ROLE: "an ordinary word",
    contract.DEFAULT_COMPUTE_DRIVER: "an ordinary word",
    contract.KUBERNETES_COMPUTE_DRIVER: "an ordinary word (and a package's name)",
    contract.TRANSPORT_SUPERVISOR: "an ordinary word (the in-sandbox supervisor)",
    contract.MANAGER: "the package's own name",
    # The host's mTLS directory uses upstream's file names, one of which is also ca.crt: the same
    # word for another file. The gateway's PKI files are searched for as pki/<name>.
    contract.CA_CERT_FILE: "also the host's own mTLS file name",
    contract.CA_KEY_FILE: "searched as pki/ca.key",
    contract.SERVER_CERT_FILE: "searched as pki/server.crt",
    contract.SERVER_KEY_FILE: "searched as pki/server.key",
    contract.CLIENT_CERT_FILE: "searched as pki/client.crt",
    contract.CLIENT_KEY_FILE: "searched as pki/client.key",
    contract.STORE_FILE: "searched as part of the state directory's paths",
    # Docker's own variable: every Docker client reads it (engine discovery, the CLI's children).
    contract.DOCKER_HOST_ENV: "Docker's own variable, read by every Docker client",
    # A prefix of other contract values (the label keys are searched for whole).
    contract.LABEL_PREFIX: "a prefix of the label keys",
    contract.RUN_DIR: "a prefix of ENGINE_SOCKET_MOUNT, searched for whole",
    contract.SANDBOX_NAME_ENV: "a prefix of OPENSHELL_SANDBOX_ID and _IMAGE, searched for whole",
}
#: Values that may stay spelled in one file, and why: ``(file, value)``.
ALLOWED = {
    ("openshell_core/cli/_gateway.py", contract.GATEWAY_OBJECT_PREFIX): "help text for the user",
}


def contract_values() -> dict[str, str | int]:
    """Every value of the contract, by the constant that spells it."""
    values: dict[str, str | int] = {}
    for name, value in vars(contract).items():
        if not name.isupper():
            continue
        items = value.values() if isinstance(value, dict) else value
        if isinstance(value, str | int):
            values[name] = value
        elif isinstance(value, tuple | dict):
            for index, item in enumerate(items):
                values[f"{name}[{index}]"] = item
    return values


def searched() -> dict[str, str | int]:
    return {
        name: value
        for name, value in contract_values().items()
        if not (isinstance(value, str) and value in NOT_SEARCHED)
    }


def source_files() -> Iterator[Path]:
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != CONTRACT_FILE:
                yield path


def literals(tree: ast.AST) -> Iterator[tuple[int, str | int]]:
    """String and integer literals of a module, docstrings left out (they document)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and id(node) not in docstrings
            and isinstance(node.value, str | int)
            and not isinstance(node.value, bool)
        ):
            yield node.lineno, node.value


def spelled_again(path: Path, values: dict[str, str | int]) -> list[tuple[int, str | int, str]]:
    """``(line, literal, constant)`` for each literal of ``path`` that holds a contract value."""
    found = []
    for line, literal in literals(ast.parse(path.read_text(), str(path))):
        for name, value in values.items():
            if isinstance(value, int):
                hit = literal == value if isinstance(literal, int) else str(value) in literal
            else:
                hit = isinstance(literal, str) and value in literal
            if hit:
                found.append((line, literal, name))
    return found


def test_no_contract_value_is_spelled_outside_the_contract() -> None:
    values = searched()
    found = []
    for path in source_files():
        relative = path.relative_to(ROOT).as_posix()
        for line, literal, name in spelled_again(path, values):
            if (relative, values[name]) not in ALLOWED:
                found.append(f"{relative}:{line}: {literal!r} spells contract.{name} again")
    assert not found, "import these from openshell_core.wire.contract:\n" + "\n".join(found)


def test_the_search_finds_a_value_spelled_again(tmp_path: Path) -> None:
    """The search itself works: a re-spelled port, path and variable are each found, and a
    docstring is not searched."""
    module = tmp_path / "copy.py"
    module.write_text(
        '"""Docstrings may name /var/lib/openshell."""\n'
        "PORT = 30051\n"
        'WHERE = f"{HOME}/var/lib/openshell/x"\n'
        'SECRET = "OPENSHELL_SSH_HANDSHAKE_SECRET"\n'
    )
    found = sorted((line, name) for line, _, name in spelled_again(module, searched()))
    assert found == [
        (2, "GATEWAY_PORT"),
        (3, "STATE_DIR"),
        (4, "HANDSHAKE_SECRET_ENV"),
        (4, "SECRET_ENV_NAMES[0]"),
    ]


@pytest.mark.parametrize(
    ("dockerfile", "port"),
    [
        ("gateway.Dockerfile", contract.GATEWAY_PORT),
        ("sandbox.Dockerfile", contract.SUPERVISOR_PORT),
    ],
)
def test_the_images_expose_the_contract_ports(dockerfile: str, port: int) -> None:
    """Dockerfiles cannot import the contract; they are held to it here instead."""
    text = (ROOT / "openshell_core" / "images" / dockerfile).read_text()
    assert f"EXPOSE {port}\n" in text


def test_the_contract_imports_only_the_standard_library() -> None:
    """The in-sandbox supervisor and the host's ssh-proxy import it: no third-party packages."""
    code = (
        "import sys; before = set(sys.modules); import openshell_core.wire.contract; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
        "- set(sys.stdlib_module_names)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "['openshell_core']"


def test_the_secret_names_are_the_contracts_secrets() -> None:
    assert set(contract.SECRET_ENV_NAMES) == {
        contract.HANDSHAKE_SECRET_ENV,
        contract.SSH_HOST_KEY_ENV,
        contract.SANDBOX_TOKEN_ENV,
        contract.SUPERVISOR_KEY_ENV,
    }
    assert set(contract.SECRET_FILE_NAMES) <= set(contract.GATEWAY_SECRET_STATE)
    assert all(
        name.endswith((".key", "-key")) or "secret" in name for name in contract.SECRET_FILE_NAMES
    )
