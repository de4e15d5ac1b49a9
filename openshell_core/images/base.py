"""The Debian base image, made offline from ``debootstrap`` and ``docker import``.

No registry is reachable here, so there is no ``FROM debian``: the root filesystem is
bootstrapped on the host from Debian's package mirror, tarred once into the cache (keyed by its
inputs), and imported into each engine that lacks it. A second build on the same machine costs
an import; on the same engine it costs nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import BuildError
from openshell_core.images.cache import cache_dir, input_hash

log = logging.getLogger("openshell.images")

#: Bump when the way the root filesystem is made changes; it is part of the cache key.
BUILDER_VERSION = "2"
DEFAULT_PACKAGES = ("python3", "openssh-server")


@dataclass(frozen=True)
class BaseImageSpec:
    """What goes into the base image. Everything here is part of its cache key but the mirror."""

    suite: str = "bookworm"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    mirror: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return input_hash(
            {"suite": self.suite, "packages": sorted(self.packages), "builder": BUILDER_VERSION}
        )

    @property
    def ref(self) -> str:
        return f"openshell-base:{self.key[:12]}"


def ensure_base_image(
    engine: Engine, spec: BaseImageSpec | None = None, *, cache: Path | None = None
) -> str:
    """Make sure ``engine`` has the base image; return its reference.

    :raises BuildError: when debootstrap is missing or fails.
    """
    spec = spec or BaseImageSpec()
    if engine.image_input_hash(spec.ref) == spec.key:
        return spec.ref
    tarball = _rootfs_tarball(spec, cache or cache_dir())
    log.info("importing base image %s into the engine", spec.ref)
    started = time.monotonic()
    with tarball.open("rb") as handle:
        engine.import_image(
            handle,
            ref=spec.ref,
            changes=[
                f"LABEL {labels.INPUT_HASH}={spec.key}",
                f"LABEL {labels.BUILT_BY}={labels.MANAGER}",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    log.info("imported %s in %.1f s", spec.ref, time.monotonic() - started)
    return spec.ref


def _rootfs_tarball(spec: BaseImageSpec, cache: Path) -> Path:
    """The cached root filesystem tarball for ``spec``, bootstrapping it when absent."""
    target = cache / "base" / f"{spec.suite}-{spec.key[:16]}.tar"
    if target.exists():
        return target
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BuildError(
            "debootstrap is not installed, and the base image is not cached",
            hint="apt-get install -y debootstrap (or run ci/setup.sh)",
        )
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root to build the base image", hint="run as root")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        command = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(spec.packages)}",
            spec.suite,
            str(rootfs),
        ]
        if spec.mirror:
            command.append(spec.mirror)
        log.info(
            "bootstrapping Debian %s with %s (about a minute, once per machine)",
            spec.suite,
            ", ".join(spec.packages),
        )
        _run_with_progress(command)
        _trim(rootfs)
        partial = target.with_suffix(".partial")
        subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True
        )
        partial.rename(target)
    return target


def _run_with_progress(command: list[str]) -> None:
    started = time.monotonic()
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        last_report = 0.0
        for line in process.stdout:
            tail = [*tail[-19:], line.rstrip()]
            now = time.monotonic() - started
            if now - last_report >= 5:
                log.info("debootstrap (%.0f s): %s", now, line.strip())
                last_report = now
    if process.returncode != 0:
        raise BuildError(
            f"debootstrap failed with exit code {process.returncode}:\n"
            + "\n".join(f"    {line}" for line in tail),
            hint="check that Debian's mirror is reachable, or pass another mirror",
        )
    log.info("debootstrap done in %.0f s", time.monotonic() - started)


def _trim(rootfs: Path) -> None:
    """Drop what no image should carry: package caches, and SSH host keys (every sandbox makes
    its own, so two sandboxes never share a host key)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "etc/ssh/ssh_host_*"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
