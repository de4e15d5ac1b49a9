"""Builds of the gateway, upgrade-gateway and sandbox images on top of the offline base image.

Each image carries the hash of its inputs (base image key, Dockerfile, build arguments, every wheel)
in the :data:`openshell_core.labels.INPUT_HASH` label; an image whose label matches is not rebuilt.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.errors import BuildError, EngineError
from openshell_core.images.base import BaseImageSpec, ensure_base_image
from openshell_core.images.cache import cache_dir, input_hash
from openshell_core.images.wheelhouse import Wheelhouse, ensure_wheelhouse
from openshell_core.server.store import schema_for_variant
from openshell_core.wire import contract

log = logging.getLogger("openshell.images")

BUILDER_VERSION = "2"
#: What the reference gateway imports at run time (installed into the gateway image only).
GATEWAY_REQUIREMENTS: tuple[str, ...] = (
    "docker>=7.1,<8",
    "cryptography>=42",
    # The official SDK's generated code needs these, whatever its metadata says.
    "grpcio>=1.78",
    "protobuf>=6.31.1",
    "openshell>=0.1.5,<0.2",
    # The Kubernetes compute driver (server/compute_kubernetes.py, imported when chosen).
    "kubernetes>=31",
)

#: What the supervisor's dial-out imports (the supervisor transport): the SDK's messages and gRPC.
SANDBOX_REQUIREMENTS: tuple[str, ...] = (
    "grpcio>=1.78",
    "protobuf>=6.31.1",
    "openshell>=0.1.5,<0.2",
)


@dataclass(frozen=True)
class ImageSet:
    """The image references a gateway deployment uses."""

    gateway: str = "openshell-gateway:v1"
    #: A second gateway tag for the image-upgrade scenario (v1 -> v2 on the same volume).
    gateway_upgrade: str = "openshell-gateway:v2"
    sandbox: str = contract.DEFAULT_SANDBOX_IMAGE


@dataclass(frozen=True)
class _ImageRecipe:
    ref: str
    dockerfile: str
    requirements: tuple[str, ...]
    buildargs: tuple[tuple[str, str], ...] = ()


def _recipes(images: ImageSet) -> list[_ImageRecipe]:
    return [
        _ImageRecipe(
            images.gateway, "gateway.Dockerfile", GATEWAY_REQUIREMENTS, _gateway_args("v1")
        ),
        _ImageRecipe(
            images.gateway_upgrade, "gateway.Dockerfile", GATEWAY_REQUIREMENTS, _gateway_args("v2")
        ),
        _ImageRecipe(images.sandbox, "sandbox.Dockerfile", SANDBOX_REQUIREMENTS),
    ]


def _gateway_args(variant: str) -> tuple[tuple[str, str], ...]:
    """A gateway variant, and the store schema it opens (the image's store-schema label, which
    the host reads before it resumes a volume on the image)."""
    return (("GATEWAY_VARIANT", variant), ("STORE_SCHEMA", str(schema_for_variant(variant))))


def ensure_images(
    engine: Engine,
    images: ImageSet | None = None,
    *,
    base: BaseImageSpec | None = None,
    cache: Path | None = None,
) -> ImageSet:
    """Build whatever of ``images`` is missing or stale on ``engine``; nothing is pulled.

    :returns: the image set, every reference present on the engine.
    :raises BuildError: when a build step fails (the message carries its output).
    """
    images = images or ImageSet()
    base = base or BaseImageSpec()
    cache = cache or cache_dir()
    base_ref = ensure_base_image(engine, base, cache=cache)
    for recipe in _recipes(images):
        _ensure_built(engine, recipe, base_ref, base.key, cache)
    return images


def _ensure_built(
    engine: Engine, recipe: _ImageRecipe, base_ref: str, base_key: str, cache: Path
) -> None:
    wheelhouse = ensure_wheelhouse(recipe.requirements, cache=cache)
    dockerfile = resources.files("openshell_core.images").joinpath(recipe.dockerfile).read_text()
    buildargs = {"BASE_IMAGE": base_ref, **dict(recipe.buildargs)}
    wanted = input_hash(
        {
            "builder": BUILDER_VERSION,
            "base": base_key,
            "dockerfile": dockerfile,
            "buildargs": buildargs,
            "wheels": wheelhouse.digest(),
        }
    )
    if engine.image_input_hash(recipe.ref) == wanted:
        log.info("image %s is up to date", recipe.ref)
        return
    log.info("building image %s", recipe.ref)
    started = time.monotonic()
    context = _context(dockerfile, wheelhouse, recipe.requirements)
    try:
        for line in engine.build_image(
            context,
            ref=recipe.ref,
            labels={labels.INPUT_HASH: wanted, labels.BUILT_BY: labels.MANAGER},
            buildargs=buildargs,
        ):
            if line.startswith("Step "):
                log.info("  %s", line)
    except EngineError as exc:
        raise BuildError(
            str(exc), hint="the build runs with no network; every input must be in the wheelhouse"
        ) from exc
    log.info("built %s in %.1f s", recipe.ref, time.monotonic() - started)


def _context(dockerfile: str, wheelhouse: Wheelhouse, requirements: tuple[str, ...]) -> io.BytesIO:
    """A build context tarball: the Dockerfile and ``wheels/`` (wheels plus requirements.txt)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        _add_bytes(archive, "Dockerfile", dockerfile.encode())
        _add_bytes(
            archive, "wheels/requirements.txt", "".join(f"{r}\n" for r in requirements).encode()
        )
        for wheel in wheelhouse.wheels:
            archive.add(str(wheel), arcname=f"wheels/{wheel.name}")
    buffer.seek(0)
    return buffer


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    entry = tarfile.TarInfo(name)
    entry.size = len(data)
    entry.mode = 0o644
    archive.addfile(entry, io.BytesIO(data))
