"""Seeding a sandbox's workspace volume from its image's ``/sandbox``, once.

The compute driver runs an init container from the sandbox image with the workspace volume at
:data:`INIT_MOUNT` and ``sh -c SEED_SCRIPT``. The copy happens only while the volume lacks
:data:`SENTINEL`, so files the user changed or deleted stay that way on every later start.
``tar`` copies symlinks as symlinks (the image's ``/sandbox/.config/self -> .`` would send a
copier that follows links into a loop) and keeps modes and owners (``-p``, run as root).
"""

from __future__ import annotations

from typing import Final

from openshell_core.wire import contract

IMAGE_DIR: Final = contract.WORKSPACE_DIR
INIT_MOUNT: Final = "/workspace-pvc"
SENTINEL: Final = contract.WORKSPACE_SENTINEL

_COPY: Final = f"tar -C {IMAGE_DIR} -cf - . | tar -C {INIT_MOUNT} -xpf -"

#: Seed once: copy only when the sentinel is absent (and the image has the directory), then mark.
#: An image without /sandbox still gets the sentinel, as upstream did.
SEED_SCRIPT: Final = f"""set -eu
if [ ! -e {INIT_MOUNT}/{SENTINEL} ]; then
  if [ -d {IMAGE_DIR} ]; then
    {_COPY}
  fi
  touch {INIT_MOUNT}/{SENTINEL}
fi
"""

#: The ``reseed-workspace`` fault: the same copy at every start, over whatever the user changed.
RESEED_SCRIPT: Final = f"""set -eu
if [ -d {IMAGE_DIR} ]; then
  {_COPY}
fi
touch {INIT_MOUNT}/{SENTINEL}
"""


def seed_script(*, reseed: bool = False) -> str:
    """The init container's script (``reseed`` for the ``reseed-workspace`` fault)."""
    return RESEED_SCRIPT if reseed else SEED_SCRIPT


def seed_command(*, reseed: bool = False) -> list[str]:
    """The init container's whole command line."""
    return ["sh", "-c", seed_script(reseed=reseed)]
