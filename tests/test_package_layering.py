"""Code is arranged by where it runs, and the packages import each other one way only.

- ``wire/`` (the byte formats every side shares) imports the standard library, itself and the
  error hierarchy (``errors.py``, standard library only): the sandbox image has no third-party
  packages, and ``ssh-proxy`` starts for every SSH connection.
- ``sandbox/`` (the in-sandbox supervisor) imports only ``wire/`` and itself.
- ``host/`` (the user's side) imports nothing of ``server/`` or ``sandbox/``.
- ``server/`` (the reference gateway) imports nothing of ``host/``, ``gateway/`` or ``cli/``.

The map is drawn in docs/internals.md ("Packages").
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "openshell_core"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, in functions and TYPE_CHECKING too."""
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            # ``from openshell_core import wire`` names a package, not a symbol
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _violations(
    package: str, allowed: tuple[str, ...], forbidden: tuple[str, ...], core: Path = CORE
) -> list[str]:
    """Imports of ``openshell_core`` from ``package`` that are outside ``allowed`` (when given)
    or inside ``forbidden``."""
    found = []
    paths = sorted((core / package).rglob("*.py"))
    assert paths, f"no package {package}/ under {core}"
    for path in paths:
        for line, module in _imports(path, core.parent):
            if not module.startswith("openshell_core."):
                continue
            where = f"{path.relative_to(core.parent)}:{line} imports {module}"
            inside = module.split(".")[1]
            if forbidden and inside in forbidden:
                found.append(where)
            if allowed and not any(
                module == f"openshell_core.{a}" or module.startswith(f"openshell_core.{a}.")
                for a in allowed
            ):
                # ``from openshell_core import wire`` yields "openshell_core.wire" (allowed);
                # the bare "openshell_core" is skipped above.
                found.append(where)
    return sorted(set(found))


def _third_party(package: str) -> list[str]:
    found = []
    for path in sorted((CORE / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top and top != "openshell_core" and top not in sys.stdlib_module_names:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return sorted(set(found))


def test_wire_imports_only_itself_and_the_error_hierarchy() -> None:
    assert _violations("wire", ("wire", "errors"), ()) == []


#: The supervisor transport's dial-out speaks gRPC: the one module of the supervisor that may.
DIAL_OUT = "openshell_core/sandbox/dialout.py"


def test_wire_and_sandbox_import_only_the_standard_library() -> None:
    found = _third_party("wire") + _third_party("sandbox")
    assert [hit for hit in found if not hit.startswith(DIAL_OUT + ":")] == []


def test_only_the_dial_out_module_of_the_sandbox_imports_grpc() -> None:
    found = _third_party("sandbox")
    assert {hit.split(":")[0] for hit in found} <= {DIAL_OUT}


def test_the_error_hierarchy_imports_nothing_of_the_project() -> None:
    # wire/ may import it only because it is a leaf.
    imported = [m for _, m in _imports(CORE / "errors.py") if m.startswith("openshell_core")]
    assert imported == []


def test_the_sandbox_imports_only_wire() -> None:
    found = _violations("sandbox", ("sandbox", "wire"), ())
    # the dial-out reaches the official SDK's messages through the one module that imports them
    assert [hit for hit in found if not hit.startswith(DIAL_OUT + ":")] == []
    assert {hit.split(" imports ")[1] for hit in found} <= {
        "openshell_core.grpc_api",
        "openshell_core.grpc_api.pb",
        "openshell_core.grpc_api.stub",
    }


def test_the_host_side_imports_neither_server_nor_sandbox() -> None:
    assert _violations("host", (), ("server", "sandbox")) == []


def test_the_server_imports_neither_host_nor_gateway_nor_cli() -> None:
    assert _violations("server", (), ("host", "gateway", "cli")) == []


def test_the_layering_check_finds_a_relative_import_inside_a_function(tmp_path: Path) -> None:
    core = tmp_path / "openshell_core"
    (core / "sandbox").mkdir(parents=True)
    (core / "sandbox" / "__init__.py").write_text("")
    (core / "sandbox" / "mode.py").write_text("def f():\n    from ..server import api\n")
    assert _violations("sandbox", ("sandbox", "wire"), (), core) == [
        "openshell_core/sandbox/mode.py:2 imports openshell_core.server",
        "openshell_core/sandbox/mode.py:2 imports openshell_core.server.api",
    ]


_LOADED = (
    "import json, sys\n"
    "{body}\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'grpc'))))\n"
)


def _heavy_modules_after(body: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED.format(body=body)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_ssh_proxy_help_loads_neither_docker_nor_grpc() -> None:
    body = (
        "import contextlib, io\n"
        "from openshell_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['ssh-proxy', '--help'])"
    )
    assert _heavy_modules_after(body) == []


@pytest.mark.parametrize(
    "module",
    [
        "openshell_core.host.sshproxy",
        "openshell_core.host.sshproxy.tunnel",
        "openshell_core.host.sshproxy.resumable_relay",
        "openshell_core.host.sshproxy.ssh_command",
        "openshell_core.host.metadata",
        "openshell_core.cli._ssh_proxy",
    ],
)
def test_ssh_proxy_modules_load_neither_docker_nor_grpc(module: str) -> None:
    assert _heavy_modules_after(f"import {module}") == []


def test_the_gateway_package_loads_docker_plainly() -> None:
    # No lazy loading left in gateway/__init__.py: importing it loads the lifecycle (and Docker).
    assert "docker" in _heavy_modules_after("import openshell_core.gateway")


def test_the_cluster_side_imports_neither_server_nor_sandbox_nor_host() -> None:
    # kube/ renders and operates a gateway on a cluster from the user's side, as gateway/ does
    # on Docker; the server's Kubernetes compute driver is the gateway's own business.
    assert _violations("kube", (), ("server", "sandbox", "host", "cli")) == []
