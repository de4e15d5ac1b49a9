"""The ``pytest11`` entry point of pytest-openshell (inert until its options land)."""

from __future__ import annotations
