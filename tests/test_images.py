"""Offline image builds: base image from debootstrap, wheelhouse, gateway and sandbox images."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from openshell_core import labels
from openshell_core.engine import Engine, PrivateEngine
from openshell_core.errors import EngineError, ImageNotFoundError
from openshell_core.images import (
    BaseImageSpec,
    ImageSet,
    cache_dir,
    ensure_base_image,
    ensure_images,
)
from openshell_core.images.wheelhouse import build_project_wheel


def _image_ids(engine: Engine, images: ImageSet) -> dict[str, str]:
    refs = (images.gateway, images.gateway_upgrade, images.sandbox)
    return {ref: engine.require_image(ref)["Id"] for ref in refs}


def test_images_carry_the_hash_of_their_inputs(engine: Engine, images: ImageSet) -> None:
    for ref in (images.gateway, images.gateway_upgrade, images.sandbox, BaseImageSpec().ref):
        found = engine.require_image(ref)
        image_labels = found["Config"]["Labels"]
        assert len(image_labels[labels.INPUT_HASH]) == 64
        assert labels.built_by_us(image_labels)
        assert not labels.is_ours(image_labels), "containers inherit image labels"


def test_an_unchanged_input_rebuilds_nothing(engine: Engine, images: ImageSet) -> None:
    before = _image_ids(engine, images)
    ensure_images(engine)
    assert _image_ids(engine, images) == before


def test_the_upgrade_gateway_is_a_different_image(engine: Engine, images: ImageSet) -> None:
    ids = _image_ids(engine, images)
    assert ids[images.gateway] != ids[images.gateway_upgrade]
    env = engine.require_image(images.gateway_upgrade)["Config"]["Env"]
    assert "OPENSHELL_GATEWAY_VARIANT=v2" in env


def test_the_gateway_image_declares_a_healthcheck(engine: Engine, images: ImageSet) -> None:
    """Deploy waits on Docker health; the gateway tests show it turning healthy for real."""
    for ref in (images.gateway, images.gateway_upgrade):
        check = engine.require_image(ref)["Config"]["Healthcheck"]
        assert check["Test"][:2] == ["CMD", "python3"]


def test_sandbox_image_ships_no_ssh_host_keys(engine: Engine, images: ImageSet) -> None:
    """Every sandbox makes its own host key; a key baked into the image would be shared."""
    name = f"keys-{time.monotonic_ns()}"
    engine.create_container(
        name=name,
        image=images.sandbox,
        entrypoint=["sh", "-c", "ls /etc/ssh/ | grep -c ssh_host_ || true"],
        labels=labels.ownership(role="test"),
    )
    try:
        engine.start_container(name)
        engine.api.wait(name, timeout=60)
        assert engine.container_logs(name) == ["0"]
    finally:
        engine.remove_container(name)


def test_build_steps_have_no_network(engine: Engine, base_image: str) -> None:
    dockerfile = (
        f"FROM {base_image}\n"
        "RUN python3 -c \"import socket; socket.create_connection(('198.18.0.1', 80), timeout=3)\"\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        entry = tarfile.TarInfo("Dockerfile")
        entry.size = len(dockerfile)
        archive.addfile(entry, io.BytesIO(dockerfile))
    context.seek(0)
    with pytest.raises(EngineError, match="Network is unreachable"):
        list(engine.build_image(context, ref="openshell-netprobe:never", labels={}))


def test_a_missing_image_fails_at_once_and_is_never_pulled(
    engine: Engine, unique_name: str
) -> None:
    since = time.time()
    with pytest.raises(ImageNotFoundError) as caught:
        engine.create_container(name=unique_name, image="openshell-missing:v0")
    assert "not found locally" in str(caught.value)
    assert "images build" in str(caught.value)
    actions = {event.get("Action") for event in engine.events(since=since, until=time.time())}
    assert "pull" not in actions


def test_a_new_engine_imports_the_cached_base_image(
    lab_engine_factory: Callable[[], PrivateEngine], base_image: str
) -> None:
    spec = BaseImageSpec()
    tarball = next((cache_dir() / "base").glob(f"{spec.suite}-{spec.key[:16]}.tar"))
    made = tarball.stat().st_mtime_ns
    lab = lab_engine_factory()
    lab.start()
    with lab.connect() as client:
        assert ensure_base_image(client) == spec.ref
        assert client.image_input_hash(spec.ref) == spec.key
    assert tarball.stat().st_mtime_ns == made, "the cached root filesystem was reused, not rebuilt"


def test_the_project_wheel_is_reproducible(tmp_path: Path) -> None:
    first = build_project_wheel(tmp_path / "a")
    second = build_project_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    assert first.name.startswith("pytest_openshell-")
