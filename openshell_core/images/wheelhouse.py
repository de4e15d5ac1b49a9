"""The host-side wheelhouse: every Python package an image installs, gathered before the build.

Image builds run with no network, so wheels are downloaded on the host (same CPython 3.11 ABI as
Debian bookworm) and copied into the build context. Dependency wheels are cached by their
requirement list; the project's own wheel is packed from its installed sources, byte-for-byte
reproducibly, so an unchanged source tree gives an unchanged image hash.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openshell_core.errors import BuildError
from openshell_core.images.cache import cache_dir, file_digest, input_hash

log = logging.getLogger("openshell.images")

DISTRIBUTION = "pytest-openshell"
PACKAGES = ("openshell_core", "pytest_openshell")
#: 1980-01-01, the earliest time a zip entry can carry: fixed so the wheel is reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheelhouse:
    """A directory of wheels: ``dependencies`` for ``requirements`` plus the ``project`` wheel."""

    directory: Path
    requirements: tuple[str, ...]
    dependencies: tuple[Path, ...]
    project: Path

    @property
    def wheels(self) -> tuple[Path, ...]:
        return (*self.dependencies, self.project)

    def digest(self) -> str:
        """A hash of every wheel's content: what the image's input hash is made of."""
        return input_hash({path.name: file_digest(path) for path in self.wheels})


def ensure_wheelhouse(requirements: Sequence[str], *, cache: Path | None = None) -> Wheelhouse:
    """Download (once) the wheels for ``requirements`` and pack the project wheel.

    ``pip`` itself is always included: images install from the wheelhouse with pip run from its
    own wheel, so the base image needs no pip.
    """
    cache = cache or cache_dir()
    wanted = tuple(sorted({*requirements, "pip"}))
    key = input_hash({"requirements": wanted, "python": sys.implementation.cache_tag})
    directory = cache / "wheelhouse" / key[:16]
    complete = directory / ".complete"
    if not complete.exists():
        directory.mkdir(parents=True, exist_ok=True)
        log.info("downloading wheels for %s into %s", ", ".join(wanted), directory)
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--dest",
                str(directory),
                *wanted,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(
                "pip could not download the image's wheels:\n" + result.stderr[-2000:],
                hint="the host needs PyPI (or a pip index configured in pip.conf) to fill the "
                "wheelhouse once",
            )
        complete.write_text("\n".join(wanted) + "\n")
        log.info("wheelhouse ready in %.1f s", time.monotonic() - started)
    dependencies = tuple(sorted(p for p in directory.glob("*.whl")))
    project = build_project_wheel(cache / "project-wheel")
    return Wheelhouse(directory, wanted, dependencies, project)


def project_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+local"


def _package_files() -> list[tuple[str, Path]]:
    """``(archive name, source path)`` for every file of our packages, sorted."""
    files = []
    for package in PACKAGES:
        module = __import__(package)
        root = Path(module.__file__).parent  # type: ignore[arg-type]
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((f"{package}/{path.relative_to(root).as_posix()}", path))
    return files


def build_project_wheel(directory: Path) -> Path:
    """Pack our packages into a wheel; the same sources always give the same bytes."""
    version = project_version()
    dist = DISTRIBUTION.replace("-", "_")
    entries: list[tuple[str, bytes]] = [
        (name, path.read_bytes()) for name, path in _package_files()
    ]
    info = f"{dist}-{version}.dist-info"
    entries.append(
        (
            f"{info}/METADATA",
            (f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {version}\n").encode(),
        )
    )
    entries.append(
        (
            f"{info}/WHEEL",
            (
                b"Wheel-Version: 1.0\nGenerator: pytest-openshell\nRoot-Is-Purelib: true\n"
                b"Tag: py3-none-any\n"
            ),
        )
    )
    record = (
        "".join(
            f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}\n"
            for name, data in entries
        )
        + f"{info}/RECORD,,\n"
    )
    entries.append((f"{info}/RECORD", record.encode()))
    content_key = hashlib.sha256(record.encode()).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / content_key / f"{dist}-{version}-py3-none-any.whl"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    partial.rename(target)
    return target


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
