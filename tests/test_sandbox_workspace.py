"""Workspace seeding: the init container's script, run from the real sandbox image on a volume."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from openshell_core import labels
from openshell_core.engine import Engine
from openshell_core.images import ImageSet
from openshell_core.sandbox.workspace import (
    INIT_MOUNT,
    RESEED_SCRIPT,
    SEED_SCRIPT,
    SENTINEL,
    seed_command,
)

LISTING = (
    f"cd {INIT_MOUNT} && find . | sort && echo --- && readlink .config/self && cat .config/seed"
)


@dataclass
class Volume:
    engine: Engine
    network: str
    name: str

    def run(self, image: str, script: str) -> tuple[int, str]:
        """Run ``sh -c script`` in a one-shot container with the volume at the init mount."""
        container = f"openshell-test-init-{uuid.uuid4().hex[:10]}"
        self.engine.create_container(
            name=container,
            image=image,
            entrypoint=["sh", "-c"],
            command=[script],
            labels=labels.ownership(role="test"),
            network=self.network,
            binds=[f"{self.name}:{INIT_MOUNT}"],
            init=False,
        )
        try:
            self.engine.start_container(container)
            code = self.engine.wait_container(container, timeout=120)
            return code, "\n".join(self.engine.container_logs(container, tail=200))
        finally:
            self.engine.remove_container(container)

    def listing(self, image: str) -> str:
        code, output = self.run(image, LISTING)
        assert code == 0, output
        return output


@pytest.fixture(scope="module")
def network(engine: Engine) -> Iterator[str]:
    name = f"openshell-test-net-{uuid.uuid4().hex[:10]}"
    engine.create_network(name, labels=labels.ownership(role="test"))
    yield name
    engine.remove_network(name)


@pytest.fixture
def volume(engine: Engine, network: str) -> Iterator[Volume]:
    name = f"openshell-test-ws-{uuid.uuid4().hex[:10]}"
    engine.create_volume(name, labels=labels.ownership(role="test"))
    yield Volume(engine, network, name)
    engine.remove_volume(name)


def test_seed_copies_the_image_workspace_and_marks_it(volume: Volume, images: ImageSet) -> None:
    code, output = volume.run(images.sandbox, SEED_SCRIPT)
    assert code == 0, output
    files, _, rest = volume.listing(images.sandbox).partition("---\n")
    assert set(files.split()) == {
        ".",
        f"./{SENTINEL}",
        "./.config",
        "./.config/seed",
        "./.config/self",
        "./README.md",
    }
    # The self-referencing symlink is copied as a link, not followed.
    assert rest.split("\n")[:2] == [".", "seeded-from-image"]


def test_second_seed_keeps_what_the_user_changed(volume: Volume, images: ImageSet) -> None:
    assert volume.run(images.sandbox, SEED_SCRIPT)[0] == 0
    change = (
        f"rm {INIT_MOUNT}/README.md && echo mine > {INIT_MOUNT}/.config/seed "
        f"&& echo new > {INIT_MOUNT}/notes"
    )
    assert volume.run(images.sandbox, change)[0] == 0
    assert volume.run(images.sandbox, SEED_SCRIPT)[0] == 0
    files, _, rest = volume.listing(images.sandbox).partition("---\n")
    assert "./README.md" not in files.split()
    assert "./notes" in files.split()
    assert rest.split("\n")[1] == "mine"


def test_reseed_fault_overwrites_what_the_user_changed(volume: Volume, images: ImageSet) -> None:
    assert volume.run(images.sandbox, SEED_SCRIPT)[0] == 0
    assert volume.run(images.sandbox, f"echo mine > {INIT_MOUNT}/.config/seed")[0] == 0
    assert volume.run(images.sandbox, RESEED_SCRIPT)[0] == 0
    _, _, rest = volume.listing(images.sandbox).partition("---\n")
    assert rest.split("\n")[1] == "seeded-from-image"


def test_image_without_a_workspace_still_gets_the_sentinel(
    volume: Volume, base_image: str, images: ImageSet
) -> None:
    code, output = volume.run(base_image, SEED_SCRIPT)
    assert code == 0, output
    code, output = volume.run(images.sandbox, f"find {INIT_MOUNT} | sort")
    assert (code, output.split()) == (0, [INIT_MOUNT, f"{INIT_MOUNT}/{SENTINEL}"])


def test_seed_keeps_modes(volume: Volume, images: ImageSet) -> None:
    assert volume.run(images.sandbox, SEED_SCRIPT)[0] == 0
    code, output = volume.run(images.sandbox, f"stat -c '%a %U' {INIT_MOUNT}/README.md")
    assert (code, output.strip()) == (0, "644 root")


def test_seed_command_is_sh_c_with_the_script() -> None:
    assert seed_command() == ["sh", "-c", SEED_SCRIPT]
    assert seed_command(reseed=True) == ["sh", "-c", RESEED_SCRIPT]
    assert SENTINEL in SEED_SCRIPT
    assert SENTINEL in RESEED_SCRIPT
