"""Docker engine access: discovery, the :class:`Engine` handle and the :class:`PrivateEngine`."""

from __future__ import annotations

from openshell_core.engine.discovery import EngineMode, find_engine, open_engine
from openshell_core.engine.docker_api import Engine, connect
from openshell_core.engine.private import EngineStatus, PrivateEngine

__all__ = [
    "Engine",
    "EngineMode",
    "EngineStatus",
    "PrivateEngine",
    "connect",
    "find_engine",
    "open_engine",
]
