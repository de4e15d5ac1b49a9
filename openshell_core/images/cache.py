"""Where offline build inputs are cached on the host, and how inputs are hashed."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$OPENSHELL_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-openshell``, else ``~/.cache``."""
    env = os.environ if env is None else env
    if env.get("OPENSHELL_CACHE_DIR"):
        return Path(env["OPENSHELL_CACHE_DIR"])
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pytest-openshell"


def input_hash(inputs: Mapping[str, Any]) -> str:
    """A stable sha256 of JSON-able build inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
